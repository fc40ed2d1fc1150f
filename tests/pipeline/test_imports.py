"""A worker process starts light: what it imports to process a run leaves out the SSH library."""

from __future__ import annotations

import subprocess
import sys


def test_a_worker_does_not_import_asyncssh() -> None:
    """Each worker is spawned fresh and imports the config and pipeline packages; asyncssh (with
    cryptography) there would cost every worker about 0.2 s and 20 MiB at start."""
    code = ("import sys, feedd.config, feedd.pipeline.process, feedd.pipeline.runner;"
            "print('asyncssh' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False", out.stdout
