"""`feedd serve` started from a shell with umask 0022: nothing it makes is readable by other users."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests.helpers import DEMO_PASSWORD, MINIMAL, Daemon, write


@pytest.fixture
def shell_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_uploads_and_run_outputs_are_not_world_readable(tmp_path: Path, shell_umask: None) -> None:
    daemon = Daemon(write(tmp_path, "feedd.yaml", MINIMAL))
    try:
        port = int(daemon.wait_log("listening", service="sftp")["address"].rsplit(":", 1)[1])
        transport = paramiko.Transport(("127.0.0.1", port))
        try:
            transport.connect(username="demo", password=DEMO_PASSWORD)
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            with sftp.open("/inbox/kept.csv.part", "wb") as f:  # a temporary name: stays in the inbox
                f.write(b"email\nkept@example.org\n")
            with sftp.open("/inbox/people.csv", "wb") as f:  # taken, processed, outputs written
                f.write(b"email\na@example.org\nnot-an-email\n")
        finally:
            transport.close()
        daemon.wait_log("run.finished", timeout=40)
        made = list((tmp_path / "var").rglob("*"))
        assert tmp_path / "var" / "spaces" / "demo" / "inbox" / "kept.csv.part" in made
        assert len([p for p in made if p.is_file()]) >= 5, made  # the upload, spool, outputs, database, keys
        readable = {str(p.relative_to(tmp_path)): oct(p.lstat().st_mode & 0o777) for p in made
                    if not p.is_symlink() and p.lstat().st_mode & stat.S_IRWXO}
        assert readable == {}
    finally:
        daemon.stop()
