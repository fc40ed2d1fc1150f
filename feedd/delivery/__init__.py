"""Delivery: a run's output to each of its pipeline's destinations."""
