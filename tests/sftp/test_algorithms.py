"""The SSH algorithms the SFTP server offers: by default enough for clients on older stacks (curl with
libssh2 1.10, which has no ETM MAC), and `sftp.algorithms` for partners who need more, validated against
what asyncssh has and with weak choices reported."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from feedd.config import load_config
from feedd.errors import ConfigError
from tests.helpers import DEMO_PASSWORD, MINIMAL, run_cli, write
from tests.sftp.conftest import Feedd
from tests.sftp.logs import capture_logs, events

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


def _curl(port: int, source: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--insecure", "-u", f"demo:{DEMO_PASSWORD}", *extra,
         "-T", str(source), f"sftp://127.0.0.1:{port}/inbox/"],
        capture_output=True, text=True, timeout=60, check=False,
    )


@needs_curl
async def test_curl_uploads_over_sftp(feedd: Feedd, tmp_path: Path) -> None:
    data = b"email\n" + b"".join(f"user{i}@example.org\n".encode() for i in range(3000))
    (tmp_path / "people.csv").write_bytes(data)
    result = await asyncio.to_thread(_curl, feedd.port, tmp_path / "people.csv")
    assert result.returncode == 0, result.stderr
    [run] = await feedd.wait_runs(1)
    assert run.source.name == "inbox/people.csv"
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()


async def test_a_configured_algorithm_is_offered_and_the_others_are_not(start_feedd: Any) -> None:
    with capture_logs() as logs:
        feedd: Feedd = await start_feedd(sftp_extra="algorithms: {kex: [ecdh-sha2-nistp256, curve25519-sha256],"
                                                     " macs: [hmac-sha2-256, hmac-sha1]}")
    [weak] = events(logs, "sftp.weak_algorithm")
    assert "hmac-sha1 uses SHA-1" in weak["detail"]
    async with await feedd.connect(kex_algs=["ecdh-sha2-nistp256"], mac_algs=["hmac-sha2-256"],
                                   encryption_algs=["aes128-ctr"]) as conn:
        assert conn.get_extra_info("recv_mac") == "hmac-sha2-256"
    with pytest.raises(asyncssh.KeyExchangeFailed):
        await feedd.connect(mac_algs=["hmac-sha2-512-etm@openssh.com"], encryption_algs=["aes128-ctr"])


async def test_the_defaults_refuse_nist_curve_key_exchange(feedd: Feedd) -> None:
    """ssh-audit fails the NIST curves: offered only when configured."""
    with pytest.raises(asyncssh.KeyExchangeFailed):
        await feedd.connect(kex_algs=["ecdh-sha2-nistp256"])


def test_an_unknown_algorithm_is_a_config_error_with_a_suggestion(tmp_path: Path) -> None:
    text = MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}', """sftp:
  listen: "127.0.0.1:0"
  algorithms:
    macs: [hmac-sha2-265]
    ciphers: [aes128-gcm@openssh.com, rot13]
    kex: []
    host_keys: [ssh-ed25519]""")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "feedd.yaml", text), env={})
    messages = [f"{i.path}: {i.message}" for i in info.value.issues]
    assert any("sftp.algorithms.macs" in m and "unknown macs algorithm 'hmac-sha2-265'" in m
               and "(did you mean 'hmac-sha2-256'?)" in m for m in messages), messages
    assert any("unknown ciphers algorithm 'rot13'" in m for m in messages), messages
    assert any("sftp.algorithms.kex" in m and "at least one algorithm" in m for m in messages), messages
    assert any("host_keys" in m and "unknown key (did you mean 'host_key'?)" in m for m in messages), messages


def test_check_warns_about_weak_choices(tmp_path: Path) -> None:
    text = MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}', """sftp:
  listen: "127.0.0.1:0"
  algorithms:
    kex: [curve25519-sha256, diffie-hellman-group14-sha1, diffie-hellman-group1-sha1]
    ciphers: [aes128-ctr, aes256-cbc]
    macs: [hmac-sha2-256]
    host_key: [ssh-ed25519, ssh-rsa]""")
    result = run_cli("check", "-c", str(write(tmp_path, "feedd.yaml", text)))
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4, result.stderr
    assert "sftp.algorithms.kex: diffie-hellman-group14-sha1 uses SHA-1" in result.stderr
    assert "sftp.algorithms.kex: diffie-hellman-group1-sha1 uses SHA-1" in result.stderr
    assert "sftp.algorithms.ciphers: aes256-cbc uses CBC mode" in result.stderr
    assert "sftp.algorithms.host_key: ssh-rsa uses SHA-1" in result.stderr
    # the defaults have nothing to warn about
    plain = run_cli("check", "-c", str(write(tmp_path, "plain.yaml", MINIMAL)))
    assert plain.returncode == 0 and "warning" not in plain.stderr, plain.stderr


async def test_a_reload_says_algorithms_change_at_the_next_restart(start_feedd: Any) -> None:
    feedd: Feedd = await start_feedd()
    text = feedd.config_path.read_text().replace("  scan_interval: 1s\n",
                                                 "  scan_interval: 1s\n  algorithms: {macs: [hmac-sha2-256]}\n")
    with capture_logs() as logs:
        await feedd.reload(text)
    assert events(logs, "sftp.algorithms changed: takes effect at the next restart")
    async with await feedd.connect(mac_algs=["hmac-sha2-512"], encryption_algs=["aes128-ctr"]):
        pass  # still the algorithms it started with
