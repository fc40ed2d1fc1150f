"""Test helpers: config files on disk, the daemon as a real subprocess, a real sd_notify socket."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
DEMO_PASSWORD = "demo-password"
DEMO_HASH = "$argon2id$v=19$m=19456,t=2,p=1$r32hUGwXnLSq8lBLen9Gpg$MVU5SZl/SCrA7wC8teLjH3SdPj3zaiZMnl77Jte5phk"

MINIMAL = f"""\
state_dir: ./var
log: {{level: debug, format: json}}
sftp: {{listen: "127.0.0.1:0"}}
http: {{listen: "127.0.0.1:0"}}
schemas:
  contact:
    fields:
      email: {{type: email, required: true}}
connections:
  demo:
    password_hash: "{DEMO_HASH}"
pipelines:
  demo-contacts:
    connection: demo
    schema: contact
    match: ["inbox/*.csv"]
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


class NotifySocket:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path | None = None, abstract: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind("\0" + abstract)
            self.address = "@" + abstract
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.address = str(path)
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 15.0) -> list[str]:
        """Receive datagrams until one contains `line`; returns every message received so far."""
        deadline = time.monotonic() + timeout
        while not any(line in m.split("\n") for m in self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line!r} from the daemon in {timeout}s; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return self.messages

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """`feedd serve` as a subprocess, with its JSON log lines collected from stdout."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, **(env or {})}
        # A session of its own, so that stop() can take the worker processes down with the daemon.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feedd", "serve", "-c", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, text=True, start_new_session=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._stderr: str | None = None
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.raw.append(raw)
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            self._queue.put(entry)
        self._queue.put(None)

    def wait_log(self, event: str, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        """The first log entry (seen so far or arriving within `timeout`) with this event and fields."""
        def fits(e: dict[str, Any]) -> bool:
            return e.get("event") == event and all(e.get(k) == v for k, v in match.items())

        for entry in self.lines:
            if fits(entry):
                return entry
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                entry = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if entry is None:
                break
            self.lines.append(entry)
            if fits(entry):
                return entry
        raise AssertionError(f"no log event {event!r} {match} in {timeout}s; stdout: {''.join(self.raw)[-3000:]}"
                             f"; stderr: {self.stderr_text()}")

    def http_port(self) -> int:
        return int(self.wait_log("listening", service="http")["address"].rsplit(":", 1)[1])

    def sftp_port(self) -> int:
        return int(self.wait_log("listening", service="sftp")["address"].rsplit(":", 1)[1])

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 40.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr_text(self) -> str:
        """Everything the process wrote to stderr (only once it has exited)."""
        if self._stderr is None and self.proc.poll() is not None and self.proc.stderr is not None:
            self._stderr = self.proc.stderr.read()
        return self._stderr or ""

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the daemon and any worker it left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():  # closing a pipe another thread is reading would block
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feedd", *args], input=input, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, timeout=60, check=False,
    )


T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None] | T | None], within: float = 20.0,
                     what: str = "") -> T:
    """The first true answer of `check` (a plain or an async function), asked until `within` seconds have
    passed."""
    deadline = time.monotonic() + within
    while True:
        answer = check()
        got = await answer if inspect.isawaitable(answer) else answer
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'not reached'}: not in {within}s; last answer {got!r}")
        await asyncio.sleep(0.05)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels` in a /metrics answer (None if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    return None
