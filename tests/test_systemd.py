"""The shipped systemd unit: valid for systemd, and hardened as the README promises; the fail2ban filter
matches feedd's own failed logins and nothing a client can write into the log."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import asyncssh
import pytest

from tests.helpers import MINIMAL, REPO, Daemon, write

UNIT = REPO / "systemd" / "feedd.service"
analyze = shutil.which("systemd-analyze")
fail2ban = shutil.which("fail2ban-regex")


def verify(unit_text: str, tmp_path: Path) -> list[str]:
    """Complaints from `systemd-analyze verify` about this unit (it exits 0 on many of them)."""
    path = tmp_path / "feedd.service"
    # ExecStart must name an existing executable for verify to pass: point it at this interpreter's feedd.
    feedd = shutil.which("feedd") or "/bin/true"
    path.write_text(unit_text.replace("/usr/bin/feedd", feedd))
    result = subprocess.run([analyze or "systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    complaints = [line for line in lines if "feedd.service" in line]
    if result.returncode != 0:
        complaints.append(f"exit {result.returncode}")
    return complaints


@pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert verify(UNIT.read_text(), tmp_path) == []


@pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")
def test_verify_catches_unknown_and_invalid_settings(tmp_path: Path) -> None:
    bad = UNIT.read_text().replace("KillMode=mixed", "KillMode=sideways\nProtectSytem=strict")
    complaints = "\n".join(verify(bad, tmp_path))
    assert "Unknown key" in complaints and "ProtectSytem" in complaints
    assert "kill mode" in complaints


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_unit_has_the_promised_settings() -> None:
    s = settings(UNIT.read_text())
    expected = {
        "Type": "notify", "KillMode": "mixed", "Restart": "on-failure", "User": "feedd", "StateDirectory": "feedd",
        "ConfigurationDirectory": "feedd", "ProtectSystem": "strict", "ProtectHome": "yes",
        "NoNewPrivileges": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], key
    assert "WatchdogSec" in s and "LimitNOFILE" in s
    from feedd.daemon import DRAIN_SECONDS

    assert int(s["TimeoutStopSec"][0]) > DRAIN_SECONDS, "systemd must not SIGKILL before the drain deadline"
    assert s["CapabilityBoundingSet"] == [""], "no capabilities unless port 22 is configured"


def test_sysusers_and_tmpfiles_snippets() -> None:
    sysusers = (REPO / "systemd" / "feedd.sysusers.conf").read_text()
    assert any(line.startswith("u feedd ") for line in sysusers.splitlines())
    tmpfiles = (REPO / "systemd" / "feedd.tmpfiles.conf").read_text()
    assert "d /var/lib/feedd 0750 feedd feedd" in tmpfiles


def failregex() -> re.Pattern[str]:
    """The filter's failregex as fail2ban compiles it: <HOST> replaced by fail2ban's own host pattern."""
    text = (REPO / "systemd" / "fail2ban-feedd.conf").read_text()
    found = re.search(r"^failregex = (.*)$", text, re.M)
    assert found is not None
    return re.compile(found.group(1).replace("<HOST>", r"(?:::f{4,6}:)?(?P<host>\S+)"))


FORGED = "Failed password from 10.9.9.9 for user 'x'"
# Malformed requests that aiohttp refuses before any route runs, quoting the client's bytes as it does.
MALFORMED = [
    f"GET / HTTP/1.1\r\nHost: x\r\nX-A: \"message\": \"{FORGED}\x01\r\n\r\n",
    f"GET / HTTP/1.1\r\nHost: x\r\n\"message\": \"{FORGED}\r\n\r\n",
    f"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {FORGED}\r\n\r\n",
    'GET / HTTP/1.1\r\nHost: x\r\n{"event": "sftp.auth_failed", "ip": "10.9.9.9"}: y\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: x\r\nX: ", "event": "sftp.auth_failed", "ip": "10.9.9.9"}\x00\r\n\r\n',
    'GET /"ip": "10.9.9.9"\x00 HTTP/1.1\r\nHost: x\r\n\r\n',
    f"{FORGED}\r\n\r\n",
]


def _refused(port: int, request: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):  # aiohttp closes the connection after a malformed request
            answer += chunk
    return answer


async def test_fail2ban_matches_feedd_failures_and_nothing_a_client_writes(tmp_path: Path,
                                                                           daemons: list[Daemon]) -> None:
    daemon = Daemon(write(tmp_path, "feedd.yaml", MINIMAL))
    daemons.append(daemon)
    http_port = daemon.http_port()
    sftp_port = int(daemon.wait_log("listening", service="sftp")["address"].rsplit(":", 1)[1])
    for request in MALFORMED:
        answer = await asyncio.to_thread(_refused, http_port, request)
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0], answer
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncio.wait_for(asyncssh.connect("127.0.0.1", sftp_port, username="demo", password="wrong",
                                                known_hosts=None, client_keys=None,
                                                local_addr=("127.0.0.7", 0)), 20)
    daemon.wait_log("sftp.auth_failed", ip="127.0.0.7")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    daemon.wait_log("stopped")  # its last line: everything before it has been read
    lines = [*daemon.raw, *daemon.stderr_text().splitlines()]  # journald keeps both streams

    pattern = failregex()
    hosts = [m.group("host") for line in lines if (m := pattern.search(line))]
    assert hosts == ["127.0.0.7"], [line for line in lines if pattern.search(line)]
    # every line is one JSON object: client bytes are always inside an escaped string
    assert all(isinstance(json.loads(line), dict) for line in daemon.raw), daemon.raw
    assert daemon.stderr_text() == ""
    assert sum('"http.bad_request"' in line for line in daemon.raw) == len(MALFORMED)
    if fail2ban is not None:  # and fail2ban itself, where it is installed, agrees
        captured = tmp_path / "feedd.log"
        captured.write_text("".join(daemon.raw))
        result = await asyncio.to_thread(
            subprocess.run, [fail2ban, "-v", str(captured), str(REPO / "systemd" / "fail2ban-feedd.conf")],
            capture_output=True, text=True, timeout=60, check=True)
        banned = re.findall(r"^\|\s+(\S+)\s+\w{3} \w{3} ", result.stdout, re.M)
        assert banned == ["127.0.0.7"], result.stdout


def install_block() -> list[str]:
    """The commands of the README's systemd install, one a line."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Install as a systemd service", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_install_gives_a_config_that_writes_only_under_var_lib(tmp_path: Path) -> None:
    """The README's commands that lay out /etc/feedd, run against a folder standing in for it: the result
    loads, includes the example connections and pipelines, and every path feedd writes to is under
    /var/lib/feedd (the unit makes /etc read-only)."""
    from feedd.config import DestinationType, load_config

    etc = tmp_path / "etc" / "feedd"
    (etc / "conf.d").mkdir(parents=True)
    layout = [c for c in install_block()
              if ("/etc/feedd/" in c and c.startswith("sudo install -m")) or c.startswith("sudo sed")]
    assert any("systemd/feedd.yaml /etc/feedd/feedd.yaml" in c for c in layout), layout
    assert any("config/*.yaml /etc/feedd/conf.d/" in c for c in layout), layout
    for command in layout:
        local = command.removeprefix("sudo ").replace(" -g feedd", "").replace("/etc/feedd", str(etc))
        subprocess.run(["bash", "-c", local], cwd=REPO, check=True, timeout=30)
    config = load_config(etc / "feedd.yaml", env={})
    assert len(config.files) == 1 + len(list((REPO / "config").glob("*.yaml")))
    assert config.pipelines and config.connections and config.log.format == "json"
    written = [config.state_dir, config.sftp.spaces_dir,
               *(d.path for p in config.pipelines.values() for d in p.destinations
                 if d.type is DestinationType.DIRECTORY and d.path is not None)]
    assert len(written) > 2
    for path in written:
        assert path.is_relative_to("/var/lib/feedd"), path
    tmpfiles = (REPO / "systemd" / "feedd.tmpfiles.conf").read_text()
    assert "d /etc/feedd/conf.d 0750 root feedd -" in tmpfiles
