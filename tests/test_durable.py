"""durable.copy_whole: a file appears whole, and no hidden temporary file outlives a copy."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from feedd.durable import copy_whole


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_copy_cut_short_by_a_crash_is_overwritten_not_left_behind(tmp_path: Path) -> None:
    src, out = tmp_path / "records.csv", tmp_path / "outbox"
    src.write_bytes(b"email\nann@example.org\n")
    out.mkdir()
    (out / ".report.csv.copying").write_bytes(b"half of an earlier try")  # a daemon killed mid-copy
    copy_whole(src, out / "report.csv")
    assert (out / "report.csv").read_bytes() == b"email\nann@example.org\n"
    assert hidden(out) == []


def test_a_live_writer_of_the_same_name_is_left_alone(tmp_path: Path) -> None:
    src, out = tmp_path / "records.csv", tmp_path / "out"
    src.write_bytes(b"x\n" * 1000)
    out.mkdir()
    theirs = out / ".report.csv.copying"
    with open(theirs, "wb") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        other.write(b"theirs")
        other.flush()
        copy_whole(src, out / "report.csv")
        assert theirs.read_bytes() == b"theirs"
    assert (out / "report.csv").read_bytes() == b"x\n" * 1000
    assert hidden(out) == [".report.csv.copying"]  # theirs, to be renamed by its writer


def test_a_failed_copy_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError):
        copy_whole(tmp_path / "gone.csv", out / "report.csv")
    assert os.listdir(out) == []
