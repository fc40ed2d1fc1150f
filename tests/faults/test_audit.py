"""ssh-audit against feedd's SFTP port: no algorithm it fails, warnings only for what older clients need
(encrypt-and-MAC MACs, 64-bit UMAC tags, the 2048-bit group), strict kex on."""

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
# Offered by default for clients with nothing better (libssh2 1.10, so curl, has no ETM MAC); a client
# that has better gets better, and none of these is broken.
FOR_OLDER_CLIENTS = {
    "using encrypt-and-MAC mode": {"hmac-sha2-256", "hmac-sha2-512", "umac-128@openssh.com", "umac-64@openssh.com"},
    "using small 64-bit tag size": {"umac-64@openssh.com", "umac-64-etm@openssh.com"},
    "2048-bit modulus only provides 112-bits of symmetric strength": {"diffie-hellman-group14-sha256"},
}


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
    failed = [(kind, a["algorithm"], note) for kind in offered for a in report[kind]
              for note in a.get("notes", {}).get("fail", [])]
    assert failed == [], failed
    warned = [(kind, a["algorithm"], note) for kind in offered for a in report[kind]
              for note in a.get("notes", {}).get("warn", [])
              if note != NOT_WEAKNESS and a["algorithm"] not in FOR_OLDER_CLIENTS.get(note, ())]
    assert warned == [], warned
    assert "kex-strict-s-v00@openssh.com" in offered["kex"]  # the Terrapin countermeasure
    assert {"ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"} <= set(offered["key"])
    assert not [k for k in offered["key"] if k == "ssh-rsa" or "@ssh.com" in k]  # no SHA-1, no odd RSA variants
    assert report["cves"] == []
