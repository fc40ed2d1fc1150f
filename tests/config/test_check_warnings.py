"""`feedd check` warnings: a valid config that will not work as a service gets a line on stderr each,
and still exits 0 (it is not an error: a folder may be made writable before the start)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import MINIMAL, REPO, run_cli, write

BARE = """\
state_dir: ./var
sftp: {listen: "127.0.0.1:0"}
http: {listen: "127.0.0.1:0"}
"""


def warnings_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def with_destinations(*lines: str) -> str:
    return MINIMAL + "    destinations:\n" + "".join(f"      - {line}\n" for line in lines)


def test_a_clean_config_has_no_warnings(tmp_path: Path) -> None:
    result = run_cli("check", "-c", str(write(tmp_path, "feedd.yaml", MINIMAL)))
    assert warnings_of(result) == [] and result.stderr == ""


def test_no_connections(tmp_path: Path) -> None:
    [warning] = warnings_of(run_cli("check", "-c", str(write(tmp_path, "feedd.yaml", BARE))))
    assert "no connections" in warning


def test_folders_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should go\n")
    text = with_destinations("{type: directory, path: ./blocker/out}").replace(
        "state_dir: ./var", "state_dir: ./blocker/var").replace(
        'sftp: {listen: "127.0.0.1:0"}', 'sftp: {listen: "127.0.0.1:0", spaces_dir: ./blocker/spaces}')
    found = warnings_of(run_cli("check", "-c", str(write(tmp_path, "feedd.yaml", text))))
    assert len(found) == 3, found
    for where, name in (("state_dir", "var"), ("sftp.spaces_dir", "spaces"),
                        ("pipelines.demo-contacts.destinations[0].path", "out")):
        assert any(w.startswith(f"warning: {where}: {tmp_path / 'blocker' / name} cannot be created")
                   for w in found), (where, found)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can read (pytest's own temp folders are private to this user)."""
    folder = Path(tempfile.mkdtemp(prefix="feedd-check-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_folders_the_service_user_cannot_write(shared_dir: Path) -> None:
    (shared_dir / "var").mkdir(mode=0o755)
    (shared_dir / "readonly").mkdir(mode=0o555)
    text = with_destinations("{type: directory, path: ./readonly/out}").replace(
        'sftp: {listen: "127.0.0.1:0"}', 'sftp: {listen: "127.0.0.1:0", spaces_dir: ./readonly}')
    config = write(shared_dir, "feedd.yaml", text)
    config.chmod(0o644)
    command = [sys.executable, "-m", "feedd", "check", "-c", str(config)]
    if os.geteuid() == 0:  # root writes anywhere: check as an unprivileged user, as the service runs
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        (shared_dir / "var").chmod(0o755)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    else:
        (shared_dir / "var").chmod(0o555)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
                            env={**os.environ, "HOME": str(shared_dir)})
    found = warnings_of(result)
    assert any(w.startswith(f"warning: state_dir: {shared_dir / 'var'} is not writable") for w in found), found
    assert any(w.startswith(f"warning: sftp.spaces_dir: {shared_dir / 'readonly'} is not writable")
               for w in found), found
    assert any(w.startswith("warning: pipelines.demo-contacts.destinations[0].path: "
                            f"{shared_dir / 'readonly' / 'out'} cannot be created: {shared_dir / 'readonly'} "
                            "is not writable") for w in found), found


def test_s3_without_aiobotocore(tmp_path: Path) -> None:
    config = write(tmp_path, "feedd.yaml", with_destinations("{type: s3, bucket: feeds}"))
    assert warnings_of(run_cli("check", "-c", str(config))) == []  # installed here: no warning
    # a folder first on the path where aiobotocore fails to import, as when it is not installed
    shadow = tmp_path / "shadow" / "aiobotocore"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named aiobotocore')\n")
    found = warnings_of(run_cli("check", "-c", str(config), env={"PYTHONPATH": str(shadow.parent)}))
    assert found == ["warning: s3 destinations (demo-contacts) need aiobotocore, which is not installed: "
                     "pip install 'feedd[s3]'"]


def test_an_sftp_key_file_that_does_not_exist(tmp_path: Path) -> None:
    dest = "{type: sftp, host: 127.0.0.1, username: x, path: /upload, key_file: ./keys/partner}"
    config = write(tmp_path, "feedd.yaml", with_destinations(dest))
    [warning] = warnings_of(run_cli("check", "-c", str(config)))
    assert warning == (f"warning: pipelines.demo-contacts.destinations[0].key_file: {tmp_path / 'keys/partner'} "
                       "does not exist: every delivery will fail")
    write(tmp_path, "keys/partner", "a key\n")
    assert warnings_of(run_cli("check", "-c", str(config))) == []
