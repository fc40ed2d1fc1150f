"""Logging: structlog configured once, console on a TTY and JSON lines otherwise, with bound context.

Every library's stdlib logging (aiohttp, asyncssh, asyncio, warnings) goes through the same structlog
renderer, so in JSON mode every line in the stream is one JSON object: bytes a client chose (a malformed
header that aiohttp quotes, a user name asyncssh logs) are always escaped inside a string, never a raw
line that a log filter such as fail2ban could take for one of feedd's own.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Set up structlog. `fmt` None picks console on a TTY and JSON lines otherwise (journald keeps both)."""
    out = stream or sys.stdout
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty()) if fmt == "console" else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (asyncssh, aiohttp, asyncio) log through stdlib logging: keep their warnings, rendered by
    # the same renderer into the same stream (structlog's documented bridge for foreign log records).
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    for old in root.handlers[:]:  # as basicConfig(force=True): no other handler writes raw lines
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(_LEVELS.get(level, logging.INFO), logging.WARNING))
    logging.captureWarnings(True)  # warnings.warn() too: a logged line, not raw text on stderr


def get(name: str | None = None, **context: Any) -> Any:
    """A logger with `context` bound (connection, pipeline, run_id where known)."""
    logger = structlog.get_logger(name)
    return logger.bind(**context) if context else logger
