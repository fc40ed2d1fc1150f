"""The CLI as a user runs it: real processes, outputs checked with independent tools."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import sys
import time
from pathlib import Path

import asyncssh
import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError
from argon2.profiles import RFC_9106_LOW_MEMORY

from tests.helpers import MINIMAL, REPO, run_cli, write


def test_passwd_from_stdin_prints_an_argon2id_hash_at_owasp_strength() -> None:
    result = run_cli("passwd", input="s3cret pass\n")
    assert result.returncode == 0, result.stderr
    phc = result.stdout.strip()
    assert phc.startswith("$argon2id$v=19$")
    params = dict(p.split("=") for p in phc.split("$")[3].split(","))
    assert int(params["m"]) >= 19456 and int(params["t"]) >= 2 and int(params["p"]) >= 1
    hasher = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)  # any parameters: verify reads them from the hash
    assert hasher.verify(phc, "s3cret pass")
    with pytest.raises(VerifyMismatchError):
        hasher.verify(phc, "s3cret pass\n")


def test_passwd_refuses_empty_and_overlong_passwords() -> None:
    assert run_cli("passwd", input="\n").returncode == 1
    result = run_cli("passwd", input="x" * 1025 + "\n")
    assert result.returncode == 1 and "longer than 1024 bytes" in result.stderr


def _run_on_tty(args: list[str], answers: list[str], timeout: float = 30.0) -> tuple[int, str]:
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, so getpass reads /dev/tty from it
        os.execv(sys.executable, [sys.executable, "-m", "feedd", *args])
    output = b""
    pending = list(answers)
    answered = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            prompts = output.count(b"Password:") + output.count(b"Again:")
            if pending and prompts > answered:
                os.write(fd, pending.pop(0).encode() + b"\n")
                answered += 1
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_passwd_on_a_tty_prompts_twice() -> None:
    code, out = _run_on_tty(["passwd"], ["tty-pass", "tty-pass"])
    assert code == 0, out
    assert "Password:" in out and "Again:" in out
    phc = next(line for line in out.splitlines() if line.startswith("$argon2id$"))
    assert PasswordHasher().verify(phc.strip(), "tty-pass")
    code, out = _run_on_tty(["passwd"], ["one", "two"])
    assert code == 1 and "differ" in out


def test_apikey_prints_a_key_and_its_sha256() -> None:
    result = run_cli("apikey")
    assert result.returncode == 0
    fields = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    key, digest = fields["key"], fields["key_sha256"]
    assert len(key) >= 43  # 32 random bytes, base64url
    assert hashlib.sha256(key.encode()).hexdigest() == digest
    assert run_cli("apikey").stdout != result.stdout


def test_check_prints_a_summary_for_the_example() -> None:
    result = run_cli("check", "-c", str(REPO / "feedd.example.yaml"), cwd=REPO)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "config OK" in out
    assert "demo-contacts: inbound demo -> contact -> directory:" in out
    assert "demo-outbound: outbound demo -> contact -> outbox" in out
    assert "connections (2)" in out and "schemas (2)" in out and "pipelines (3)" in out


def test_check_prints_every_error_and_exits_1(tmp_path: Path) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL.replace("type: email", "type: emial") + "colour: blue\n")
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 1
    assert "2 error(s)" in result.stderr
    assert "feedd.yaml:8: schemas.contact.fields.email.type:" in result.stderr
    assert "(did you mean 'email'?)" in result.stderr
    assert "colour: unknown key" in result.stderr
    assert result.stdout == ""


def test_config_path_defaults_to_the_environment(tmp_path: Path) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    result = run_cli("check", env={"FEEDD_CONFIG": str(cfg)})
    assert result.returncode == 0 and str(cfg) in result.stdout


@pytest.mark.parametrize("args", [["frobnicate"], ["check", "--bogus"], []])
def test_unknown_commands_and_flags_print_usage(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert "usage: feedd" in result.stderr


def test_hostkey_makes_keys_once_and_prints_fingerprints(tmp_path: Path) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    first = run_cli("hostkey", "-c", str(cfg))
    assert first.returncode == 0, first.stderr
    key_path = tmp_path / "var" / "host_keys" / "ssh_host_ed25519_key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    expected = asyncssh.read_private_key(str(key_path)).get_fingerprint("sha256")
    assert expected in first.stdout and "ssh-ed25519" in first.stdout
    again = run_cli("hostkey", "-c", str(cfg))
    assert again.stdout == first.stdout, "the same keys, not new ones"
    regenerated = run_cli("hostkey", "-c", str(cfg), "--generate")
    assert regenerated.returncode == 0 and expected not in regenerated.stdout


def test_hostkey_refuses_when_state_exists_without_its_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    assert run_cli("hostkey", "-c", str(cfg)).returncode == 0
    for key in (tmp_path / "var" / "host_keys").iterdir():
        key.unlink()
    result = run_cli("hostkey", "-c", str(cfg))
    assert result.returncode == 1 and "is missing but the state" in result.stderr


def test_try_prints_counts_mapping_and_errors_and_writes_nothing(tmp_path: Path) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    data = tmp_path / "contacts.csv"
    data.write_text("E-Mail\nann@example.org\nnope\n")
    result = run_cli("try", "-c", str(cfg), "--pipeline", "demo-contacts", str(data))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "contacts.csv -> demo-contacts: completed" in out
    assert "rows 2   valid 1   invalid 1" in out
    assert "email  <- E-Mail  (similar 0.91)" in out
    assert "3  email" in out and "'nope' is not an email address" in out
    assert not (tmp_path / "var").exists(), "try writes nothing"


def test_try_shows_a_fallback_mapping_and_reads_an_empty_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL + '    mappings: {email: "Email"}\n')
    data = tmp_path / "renamed.csv"
    data.write_text("EMAIL\nann@example.org\n")
    result = run_cli("try", "-c", str(cfg), "--pipeline", "demo-contacts", str(data))
    assert result.returncode == 0, result.stderr
    assert "email  <- EMAIL  (normalized)" in result.stdout
    assert "the configured column 'Email' is not in the file's header; the auto-map chose 'EMAIL'" in result.stdout
    data.write_bytes(b"")
    result = run_cli("try", "-c", str(cfg), "--pipeline", "demo-contacts", str(data))
    assert result.returncode == 1, result.stderr
    assert "error: empty_input: renamed.csv: the file is empty (0 bytes)" in result.stdout


def test_try_exits_1_when_the_run_would_fail(tmp_path: Path) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    data = tmp_path / "x.csv"
    data.write_text("Phone\n123\n")
    result = run_cli("try", "-c", str(cfg), "--pipeline", "demo-contacts", str(data))
    assert result.returncode == 1
    assert "error: unmapped_required_field" in result.stdout
    missing = run_cli("try", "-c", str(cfg), "--pipeline", "demo-contact", str(data))
    assert missing.returncode == 1 and "did you mean 'demo-contacts'?" in missing.stderr
