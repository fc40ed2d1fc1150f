"""The pipeline: read -> map -> transform -> validate -> write. Stages are pure functions over rows."""
