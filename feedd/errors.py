"""The error kinds feedd raises: one root, a few kinds, each mapped to one behaviour upstream."""

from __future__ import annotations

from dataclasses import dataclass


class FeeddError(Exception):
    """Root of every error feedd raises on purpose. `code` is machine-readable and stable."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, located to the file, line and key path."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(FeeddError):
    """A config that cannot be used. Carries every issue found, not only the first."""

    code = "config_invalid"

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class InputError(FeeddError):
    """An input (file, upload, request body) that cannot be processed as it is."""

    code = "invalid_input"


class RetryableDeliveryError(FeeddError):
    """A delivery that failed in a way worth retrying (timeout, 5xx, refused connection)."""

    code = "delivery_failed"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidError(FeeddError):
    """Input that is well formed but does not fit (a config object, a review decision); `details` locate
    each problem: `[{path, message}]`."""

    code = "invalid"

    def __init__(self, message: str, details: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.details = details


class StaleError(FeeddError):
    """A change made against a version that is no longer the current one."""

    code = "precondition_failed"


class NotFoundError(FeeddError):
    """An id or name that does not exist."""

    code = "not_found"


class ConflictError(FeeddError):
    """An operation that the current state does not allow."""

    code = "conflict"


class StartupError(FeeddError):
    """The daemon cannot start safely (for example: host key missing from an existing state)."""

    code = "startup_refused"


class DuplicateContentError(FeeddError):
    """A run recorded as the first of its connection's content when another run is that already (recorded
    meanwhile, by another node): `original` is that run's id."""

    code = "duplicate_input"

    def __init__(self, message: str, original: str) -> None:
        super().__init__(message)
        self.original = original
