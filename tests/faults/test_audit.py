"""ssh-audit against feedd's SFTP port: no algorithm it fails or warns on for weakness, strict kex on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import DEMO_HASH, Daemon, write

# Warnings about the future rather than weakness: classic curve25519 and DH have no post-quantum
# protection, and refusing them would lock out every OpenSSH client before 9.9.
NOT_WEAKNESS = "does not provide protection against post-quantum attacks"


def test_no_weak_algorithm_and_strict_kex(tmp_path: Path, daemons: list[Daemon]) -> None:
    # A fresh state: feedd makes its own ed25519 and RSA host keys, and RSA is where SHA-1 could creep in.
    config = write(tmp_path, "feedd.yaml", f"""state_dir: ./var
log: {{format: json}}
sftp: {{listen: "127.0.0.1:0"}}
http: {{listen: "127.0.0.1:0"}}
connections: {{demo: {{password_hash: "{DEMO_HASH}"}}}}
""")
    daemon = Daemon(config)
    daemons.append(daemon)
    port = daemon.wait_log("listening", service="sftp")["address"].rsplit(":", 1)[1]
    audit = shutil.which("ssh-audit") or str(Path(sys.executable).parent / "ssh-audit")
    done = subprocess.run([audit, "-j", "--skip-rate-test", "-p", port, "127.0.0.1"], capture_output=True,
                          text=True, timeout=60, check=False)
    report = json.loads(done.stdout)
    offered = {kind: [a["algorithm"] for a in report[kind]] for kind in ("kex", "key", "enc", "mac")}
    problems = [(kind, a["algorithm"], note) for kind in offered for a in report[kind]
                for level in ("fail", "warn") for note in a.get("notes", {}).get(level, []) if note != NOT_WEAKNESS]
    assert problems == [], problems
    assert "kex-strict-s-v00@openssh.com" in offered["kex"]  # the Terrapin countermeasure
    assert {"ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"} <= set(offered["key"])
    assert not [k for k in offered["key"] if k == "ssh-rsa" or "@ssh.com" in k]  # no SHA-1, no odd RSA variants
    assert report["cves"] == []
