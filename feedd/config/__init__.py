"""The config file (README, "Configuration"): YAML -> frozen dataclasses, with every error located to file:line."""

from feedd.config.parse import EVENT_TYPES, load_config
from feedd.config.values import (
    Address,
    ApiKey,
    Config,
    Connection,
    Destination,
    DestinationType,
    FieldMapping,
    FieldSpec,
    FieldType,
    Pipeline,
    Schema,
    Transform,
)

__all__ = [
    "EVENT_TYPES",
    "Address",
    "ApiKey",
    "Config",
    "Connection",
    "Destination",
    "DestinationType",
    "FieldMapping",
    "FieldSpec",
    "FieldType",
    "Pipeline",
    "Schema",
    "Transform",
    "load_config",
]
