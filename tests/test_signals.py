"""Ctrl-C and closed pipes, as a terminal user meets them: `feedd serve` stops quietly on SIGINT sent to
its whole process group (worker processes included), and `feedd runs ... | head` ends without a traceback."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import MINIMAL, Daemon, write

KEY = "signals-test-key-0123456789"
CONFIG = MINIMAL.replace(
    'sftp: {listen: "127.0.0.1:0"}', 'sftp: {listen: "127.0.0.1:0", settle: 200ms, scan_interval: 1s}'
).replace(
    'http: {listen: "127.0.0.1:0"}',
    'http: {listen: "127.0.0.1:0", api_keys: [{name: t, key_sha256: "'
    + hashlib.sha256(KEY.encode()).hexdigest() + '"}]}')


def serve_with_a_run(tmp_path: Path, daemons: list[Daemon]) -> tuple[Daemon, str]:
    """A daemon whose worker processes exist (one run went through them); returns it and the run id."""
    d = Daemon(write(tmp_path, "feedd.yaml", CONFIG))
    daemons.append(d)
    d.wait_log("ready")
    inbox = tmp_path / "var" / "spaces" / "demo" / "inbox"
    (inbox / "contacts.csv").write_text("email\na@example.com\nnot-an-email\n")
    finished = d.wait_log("run.finished")
    return d, str(finished["run_id"])


def test_ctrl_c_to_the_process_group_stops_quietly_with_exit_0(tmp_path: Path, daemons: list[Daemon]) -> None:
    d, _run = serve_with_a_run(tmp_path, daemons)
    os.killpg(d.proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: every process of the group
    assert d.wait() == 0
    d.wait_log("stopped")
    err = d.stderr_text()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def cli_into_closed_pipe(port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout a pipe whose reader has already gone."""
    read, write_end = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "feedd", *args, "--url", f"http://127.0.0.1:{port}"],
                              stdout=write_end, stderr=subprocess.PIPE, timeout=60, check=False,
                              env={**os.environ, "FEEDD_API_KEY": KEY})
    finally:
        os.close(write_end)


def test_runs_list_and_show_into_a_closed_pipe_end_without_a_traceback(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    d, run = serve_with_a_run(tmp_path, daemons)
    port = d.http_port()
    for args in (("runs", "list"), ("runs", "show", run)):
        done = cli_into_closed_pipe(port, *args)
        err = done.stderr.decode()
        assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
        assert done.returncode == 141, (args, done.returncode, err)  # 128 + SIGPIPE, as a shell reports
    # and as a user types it: the reader takes one byte and leaves
    cli = subprocess.Popen([sys.executable, "-m", "feedd", "runs", "show", run, "--url", f"http://127.0.0.1:{port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "FEEDD_API_KEY": KEY})
    assert cli.stdout is not None
    head = subprocess.run(["head", "-c1"], stdin=cli.stdout, capture_output=True, timeout=60, check=True)
    cli.stdout.close()  # only head holds the read end now, as in a shell pipeline
    _out, cli_err = cli.communicate(timeout=60)
    assert head.stdout == b"{" and b"Traceback" not in cli_err, cli_err.decode()
