"""`feedd serve` as systemd runs it: a real process, a real notify socket, real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedd import sdnotify
from feedd.config import load_config
from feedd.config.values import Address
from feedd.summary import next_steps
from tests.helpers import MINIMAL, REPO, Daemon, NotifySocket, run_cli, write


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def start(daemons: list[Daemon], config: Path, **env: str) -> Daemon:
    d = Daemon(config, env=env)
    daemons.append(d)
    return d


def healthz(port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_ready_after_listening_then_sigterm_drains_and_exits_0(
        tmp_path: Path, notify: NotifySocket, daemons: list[Daemon]) -> None:
    d = start(daemons, write(tmp_path, "feedd.yaml", MINIMAL), NOTIFY_SOCKET=notify.address)
    notify.wait_for("READY=1")
    port = d.http_port()  # logged before READY
    assert healthz(port) == {"status": "ok"}
    d.signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    assert d.wait(timeout=35) == 0
    d.wait_log("stopped")
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_next_steps_name_the_console_when_operators_can_log_in() -> None:
    config = load_config(REPO / "feedd.example.yaml", env={})
    steps = next_steps(config, [Address("127.0.0.1", 2222)], [Address("0.0.0.0", 8080)])
    assert steps["next"].endswith(", or open the console: http://127.0.0.1:8080/ui/")


def test_serve_says_where_to_go_next(tmp_path: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, write(tmp_path, "feedd.yaml", MINIMAL))
    sftp = d.wait_log("listening", service="sftp")["address"]
    http = d.http_port()
    steps = d.wait_log("next steps")
    assert steps["sftp"] == sftp and steps["http"] == f"http://127.0.0.1:{http}"
    port = sftp.rsplit(":", 1)[1]
    assert steps["next"] == (f"upload into inbox/: sftp -P {port} demo@127.0.0.1, "
                             f"then: feedd runs list --url http://127.0.0.1:{http} --key <api key>")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_abstract_notify_socket(tmp_path: Path, daemons: list[Daemon]) -> None:
    sock = NotifySocket(abstract=f"feedd-test-{time.monotonic_ns()}")
    try:
        d = start(daemons, write(tmp_path, "feedd.yaml", MINIMAL), NOTIFY_SOCKET=sock.address)
        sock.wait_for("READY=1")
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    finally:
        sock.close()


def test_the_watchdog_interval_is_half_of_what_systemd_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 0.2
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert sdnotify.watchdog_interval() is None


def test_watchdog_pings_keep_coming(tmp_path: Path, notify: NotifySocket, daemons: list[Daemon]) -> None:
    d = start(daemons, write(tmp_path, "feedd.yaml", MINIMAL), NOTIFY_SOCKET=notify.address,
              WATCHDOG_USEC="400000")
    notify.wait_for("READY=1")
    deadline = time.monotonic() + 30
    while sum(m == "WATCHDOG=1" for m in notify.messages) < 5 and time.monotonic() < deadline:
        notify.sock.settimeout(1)
        with contextlib.suppress(TimeoutError):
            notify.messages.append(notify.sock.recv(4096).decode())
    assert sum(m == "WATCHDOG=1" for m in notify.messages) >= 5
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_sighup_reloads_a_good_config_and_keeps_the_old_one_on_errors(
        tmp_path: Path, notify: NotifySocket, daemons: list[Daemon]) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    d = start(daemons, cfg, NOTIFY_SOCKET=notify.address)
    notify.wait_for("READY=1")
    port = d.http_port()

    cfg.write_text(MINIMAL + "  second:\n    connection: demo\n    schema: contact\n    match: [inbox/*.tsv]\n")
    notify.messages.clear()
    d.signal(signal.SIGHUP)
    assert d.wait_log("config reloaded")["pipelines"] == 2
    messages = notify.wait_for("READY=1")
    assert messages[0].startswith("RELOADING=1\nMONOTONIC_USEC=")

    cfg.write_text(MINIMAL.replace("type: email", "type: emial").replace("schema: contact", "schema: contcat"))
    d.signal(signal.SIGHUP)
    failed = d.wait_log("reload failed: keeping the running config")
    assert failed["errors"] == 2
    reported = [e["error"] for e in d.lines if e.get("event") == "config error"]
    assert any("feedd.yaml:8: schemas.contact.fields.email.type" in r and "did you mean 'email'" in r
               for r in reported)
    assert any("pipelines.demo-contacts.schema: unknown schema 'contcat'" in r for r in reported)
    assert healthz(port) == {"status": "ok"}, "still serving with the old config"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_bad_config_at_start_exits_2_with_every_error_on_stderr(tmp_path: Path, daemons: list[Daemon]) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL.replace("type: email", "type: emial") + "colour: blue\n")
    d = start(daemons, cfg)
    assert d.wait(timeout=20) == 2
    err = d.stderr_text()
    assert "2 error(s)" in err
    assert "feedd.yaml:8: schemas.contact.fields.email.type" in err and "colour: unknown key" in err


def test_refuses_to_start_when_the_host_key_vanished(tmp_path: Path, daemons: list[Daemon]) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    first = start(daemons, cfg)
    generated = first.wait_log("host key generated", algorithm="ssh-ed25519")
    first.wait_log("ready")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    again = start(daemons, cfg)
    kept = again.wait_log("host key", algorithm="ssh-ed25519")
    assert kept["fingerprint"] == generated["fingerprint"], "the same key on every start"
    again.signal(signal.SIGTERM)
    assert again.wait() == 0
    (tmp_path / "var" / "host_keys" / "ssh_host_ed25519_key").unlink()
    (tmp_path / "var" / "host_keys" / "ssh_host_rsa_key").unlink()
    refused = start(daemons, cfg)
    assert refused.wait(timeout=20) == 1
    assert "host key" in (err := refused.stderr_text()) and "Refusing to start" in err
    assert not (tmp_path / "var" / "host_keys" / "ssh_host_ed25519_key").exists(), "no silent new key"


def test_port_in_use_is_a_clear_startup_failure(tmp_path: Path, daemons: list[Daemon]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write(tmp_path, "feedd.yaml", MINIMAL.replace('http: {listen: "127.0.0.1:0"}',
                                                            f'http: {{listen: "127.0.0.1:{port}"}}'))
        d = start(daemons, cfg)
        assert d.wait(timeout=20) == 1
        assert "cannot start" in d.stderr_text() and str(port) in d.stderr_text()


def test_check_and_serve_agree_on_the_example(tmp_path: Path) -> None:
    assert run_cli("check", "-c", str(Path(__file__).parent.parent / "feedd.example.yaml")).returncode == 0


def test_a_task_that_keeps_crashing_stops_the_watchdog_pings(
        tmp_path: Path, notify: NotifySocket, daemons: list[Daemon]) -> None:
    d = start(daemons, write(tmp_path, "feedd.yaml", MINIMAL), NOTIFY_SOCKET=notify.address,
              WATCHDOG_USEC="400000", FEEDD_FAILPOINT="runner.claim")
    notify.wait_for("STATUS=failing: runner", timeout=30)
    d.wait_log("watchdog.withheld", failing=["runner"])
    # systemd restarts a service whose pings stop for WATCHDOG_USEC: none for twice that long
    seen: list[str] = []
    end = time.monotonic() + 0.8
    while (left := end - time.monotonic()) > 0:
        notify.sock.settimeout(left)
        try:
            seen.append(notify.sock.recv(4096).decode())
        except TimeoutError:
            break
    assert "WATCHDOG=1" not in seen
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
