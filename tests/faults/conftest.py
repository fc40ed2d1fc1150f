"""Receivers for the fault tests (the delivery tests' own)."""

from tests.delivery.conftest import receiver

__all__ = ["receiver"]
