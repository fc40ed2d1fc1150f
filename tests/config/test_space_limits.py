"""The space limits in the config: `sftp.max_folder_depth` and `sftp.max_entries_per_space`."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedd.config import load_config
from feedd.errors import ConfigError
from tests.helpers import MINIMAL, write


def test_defaults_and_values(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "feedd.yaml", MINIMAL), env={})
    assert cfg.sftp.max_folder_depth == 32 and cfg.sftp.max_entries_per_space == 100_000
    text = MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}',
                           'sftp: {listen: "127.0.0.1:0", max_folder_depth: 8, max_entries_per_space: 500}')
    cfg = load_config(write(tmp_path, "feedd.yaml", text), env={})
    assert cfg.sftp.max_folder_depth == 8 and cfg.sftp.max_entries_per_space == 500


def test_bad_values_are_located_errors(tmp_path: Path) -> None:
    text = MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}',
                           'sftp: {listen: "127.0.0.1:0", max_folder_depth: 0, max_entries_per_space: lots}')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "feedd.yaml", text), env={})
    found = [str(i) for i in info.value.issues]
    assert found == ["feedd.yaml:3: sftp.max_folder_depth: expected an integer >= 1, got 0",
                     "feedd.yaml:3: sftp.max_entries_per_space: expected an integer, got str 'lots'"], found
