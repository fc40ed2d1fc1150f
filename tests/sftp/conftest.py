"""A real feedd (in this process) with a real SFTP port, and helpers to talk to it as partners do."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from feedd.config import load_config
from feedd.daemon import Daemon
from feedd.model import Run
from feedd.store import RunQuery
from tests.helpers import DEMO_HASH, DEMO_PASSWORD, write

CONFIG = """\
state_dir: ./var
log: {level: debug, format: json}
sftp:
  listen: "127.0.0.1:0"
  host_keys: [@host_keys@]
  settle: 300ms
  scan_interval: 1s
  ban: {after_failures: 3, within: 1m, for: 2s}
  @sftp_extra@
http: {listen: "127.0.0.1:0"}
schemas:
  contact:
    fields:
      email: {type: email, required: true}
connections:
  demo:
    password_hash: "@hash@"
    authorized_keys: ["@demo_key@"]
    @demo_extra@
  acme:
    password_hash: "@hash@"
  acme2:
    password_hash: "@hash@"
  @connections_extra@
pipelines:
  demo-contacts:
    connection: demo
    schema: contact
    match: ["inbox/*.csv", "inbox/**/*.csv"]
    @pipeline_extra@
  acme-contacts:
    connection: acme
    schema: contact
    match: ["inbox/*.csv"]
"""


@dataclass
class Feedd:
    daemon: Daemon
    root: Path
    key_path: Path
    config_path: Path

    @property
    def port(self) -> int:
        assert self.daemon.sftp is not None
        return self.daemon.sftp.addresses[0].port

    def space(self, name: str = "demo") -> Path:
        return self.daemon.config.sftp.spaces_dir / name

    async def connect(self, username: str = "demo", password: str | None = DEMO_PASSWORD,
                      **kw: Any) -> asyncssh.SSHClientConnection:
        options: dict[str, Any] = {"known_hosts": None, "username": username, "client_keys": None}
        if password is not None:
            options["password"] = password
        options.update(kw)
        return await asyncio.wait_for(asyncssh.connect("127.0.0.1", self.port, **options), 20)

    async def runs(self, **query: Any) -> list[Run]:
        assert self.daemon.store is not None
        runs, _ = await self.daemon.store.list_runs(RunQuery(limit=100_000, oldest_first=True, **query))
        return runs

    async def wait_runs(self, count: int, within: float = 15.0, **query: Any) -> list[Run]:
        deadline = time.monotonic() + within
        while True:
            runs = await self.runs(**query)
            if len(runs) >= count or time.monotonic() > deadline:
                return runs
            await asyncio.sleep(0.05)

    async def reload(self, text: str) -> None:
        self.config_path.write_text(text)
        assert await self.daemon.reload()


def render(key: str = "", host_key: str = "", sftp_extra: str = "", demo_extra: str = "", pipeline_extra: str = "",
           connections_extra: str = "", extra_host_keys: tuple[Path, ...] = ()) -> str:
    host_keys = ", ".join(f'"{k}"' for k in (host_key, *map(str, extra_host_keys)))
    values = {"hash": DEMO_HASH, "host_keys": host_keys, "sftp_extra": sftp_extra, "demo_key": key,
              "demo_extra": demo_extra, "pipeline_extra": pipeline_extra, "connections_extra": connections_extra}
    text = CONFIG
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    return text


@pytest.fixture(scope="session")
def demo_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An ed25519 key pair for `demo`, in OpenSSH format (usable by the `sftp` client too)."""
    folder = tmp_path_factory.mktemp("keys")
    key = asyncssh.generate_private_key("ssh-ed25519", comment="demo@test")
    path = folder / "id_ed25519"
    key.write_private_key(str(path))
    path.chmod(0o600)
    return path, key.export_public_key().decode().strip()


@pytest.fixture(scope="session")
def host_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One host key for the whole run: making keys per test would cost more than the tests."""
    path = tmp_path_factory.mktemp("hostkey") / "ssh_host_ed25519_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path))
    path.chmod(0o600)
    return path


@pytest.fixture
async def start_feedd(tmp_path: Path, demo_key: tuple[Path, str],
                      host_key: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Daemon] = []

    async def start(workers: int = 0, extra_host_keys: tuple[Path, ...] = (), **parts: str) -> Feedd:
        text = render(demo_key[1], str(host_key), extra_host_keys=extra_host_keys, **parts)
        path = write(tmp_path, "feedd.yaml", text)
        # By default no workers: most tests here are about intake, so runs stay `queued` where they can be seen.
        daemon = Daemon(load_config(path, env={}), drain_seconds=2, workers=workers)
        await daemon.start()
        started.append(daemon)
        return Feedd(daemon, tmp_path, demo_key[0], path)

    yield start
    for daemon in started:
        await daemon.stop()


@pytest.fixture
async def feedd(start_feedd: Callable[..., Any]) -> Feedd:
    return await start_feedd()  # type: ignore[no-any-return]


def fetch_outbox(port: int) -> dict[str, bytes]:
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(username="demo", password=DEMO_PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        files = {}
        for name in sftp.listdir("/outbox"):
            with sftp.open(f"/outbox/{name}", "rb") as f:
                files[name] = f.read()
        return files
    finally:
        transport.close()


needs_sftp = pytest.mark.skipif(shutil.which("sftp") is None, reason="OpenSSH sftp client not installed")


def openssh_batch(feedd: Feedd, batch: str, tmp_path: Path, user: str = "demo",
                  options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "batch.txt"
    script.write_text(batch)
    return subprocess.run(
        ["sftp", "-b", str(script), "-P", str(feedd.port), "-i", str(feedd.key_path),
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", *options, f"{user}@127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
