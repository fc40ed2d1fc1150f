"""The shipped systemd unit: valid for systemd, and hardened as the README promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

UNIT = REPO / "systemd" / "feedd.service"
analyze = shutil.which("systemd-analyze")


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
