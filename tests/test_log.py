"""Logging: JSON lines when not on a terminal, console on one, context carried along."""

from __future__ import annotations

import io
import json

import structlog

from feedd import log


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_off_a_terminal_with_bound_context() -> None:
    out = io.StringIO()
    log.configure("info", None, stream=out)
    log.get(connection="acme").info("run.finished", run_id="r1", rows=3)
    log.get().debug("hidden at info level")
    [line] = out.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "run.finished" and entry["connection"] == "acme" and entry["rows"] == 3
    assert entry["level"] == "info" and entry["timestamp"].endswith("Z")


def test_console_on_a_terminal_and_format_overrides() -> None:
    tty = FakeTTY()
    log.configure("debug", None, stream=tty)
    log.get().debug("hello", pipeline="p")
    assert "hello" in tty.getvalue() and not tty.getvalue().lstrip().startswith("{")
    forced = FakeTTY()
    log.configure("info", "json", stream=forced)
    with structlog.contextvars.bound_contextvars(run_id="r9"):
        log.get().info("x")
    assert json.loads(forced.getvalue())["run_id"] == "r9"


def test_library_log_records_are_json_lines_with_client_bytes_escaped() -> None:
    import logging

    out = io.StringIO()
    log.configure("info", "json", stream=out)
    forged = ValueError("b'X: \"message\": \"Failed password from 10.9.9.9 for user 'x'\n{\"ip\": \"10.9.9.9\"}")
    logging.getLogger("aiohttp.server").error("Error handling request from %s", "127.0.0.1", exc_info=forged)
    logging.getLogger("asyncssh").warning("client version %s", "SSH-2.0-x\nFailed password from 10.9.9.9")
    logging.getLogger("asyncssh").info("below the libraries' level: dropped")
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["logger"], e["level"]) for e in entries] == [
        ("aiohttp.server", "error"), ("asyncssh", "warning")]
    assert entries[0]["event"] == "Error handling request from 127.0.0.1"
    assert "10.9.9.9" in entries[0]["exception"] and "10.9.9.9" in entries[1]["event"]
