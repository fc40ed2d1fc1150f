"""Logging: structlog configured once, console on a TTY and JSON lines otherwise, with bound context."""

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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (asyncssh, aiohttp) log through stdlib logging: keep their warnings, in the same stream.
    logging.basicConfig(level=max(_LEVELS.get(level, logging.INFO), logging.WARNING), stream=out, force=True)


def get(name: str | None = None, **context: Any) -> Any:
    """A logger with `context` bound (connection, pipeline, run_id where known)."""
    logger = structlog.get_logger(name)
    return logger.bind(**context) if context else logger
