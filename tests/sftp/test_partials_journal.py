"""The partial-upload journal: what a restart replays, what it forgets, and how it stays short."""

from __future__ import annotations

import hashlib
from pathlib import Path

from feedd import spaces
from feedd.spaces import Space


def space(tmp_path: Path) -> Space:
    markers = tmp_path / "partials" / "acme"
    markers.mkdir(parents=True, exist_ok=True)
    s = Space("acme", tmp_path / "acme", markers)
    s.load_markers()
    return s


def test_a_restart_knows_the_uploads_left_open(tmp_path: Path) -> None:
    s = space(tmp_path)
    s.mark_writing("inbox/open.csv")
    s.mark_writing("inbox/done.csv")
    s.done_writing("inbox/done.csv", complete=True)
    s.mark_writing("inbox/vanished.csv")
    s.done_writing("inbox/vanished.csv", complete=False)  # the client went away mid-upload
    s.mark_writing("inbox/tmp.part")
    s.moved("inbox/tmp.part", "inbox/renamed \"odd\"\u00e9.csv")
    again = space(tmp_path)
    assert again.partials() == ["inbox/open.csv", "inbox/renamed \"odd\"\u00e9.csv", "inbox/vanished.csv"]
    assert again.is_partial("inbox/vanished.csv") and not again.is_partial("inbox/done.csv")


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    s = space(tmp_path)
    s.mark_writing("inbox/a.csv")
    with open(s.journal, "ab") as f:
        f.write(b'+"inbox/b.c')  # the daemon died mid-append
    assert space(tmp_path).partials() == ["inbox/a.csv"]


def test_the_journal_is_rewritten_when_long(tmp_path: Path) -> None:
    s = space(tmp_path)
    s.mark_writing("inbox/left.csv")
    for i in range(spaces.JOURNAL_REWRITE_AT):
        s.mark_writing(f"inbox/f{i}.csv")
        s.done_writing(f"inbox/f{i}.csv", complete=True)
    lines = Path(s.journal).read_bytes().count(b"\n")
    assert lines < spaces.JOURNAL_REWRITE_AT, lines
    assert space(tmp_path).partials() == ["inbox/left.csv"]


def test_marker_files_of_older_versions_are_folded_in(tmp_path: Path) -> None:
    markers = tmp_path / "partials" / "acme"
    markers.mkdir(parents=True)
    legacy = markers / hashlib.sha1(b"inbox/old.csv", usedforsecurity=False).hexdigest()
    legacy.write_text("inbox/old.csv")
    s = space(tmp_path)
    assert s.partials() == ["inbox/old.csv"]
    assert not legacy.exists()
    assert space(tmp_path).partials() == ["inbox/old.csv"]


def test_a_rename_moves_the_writers_and_partials_below_a_folder(tmp_path: Path) -> None:
    s = space(tmp_path)
    s.mark_writing("inbox/sub/open.csv")
    s.mark_writing("inbox/sub/deeper/vanished.csv")
    s.done_writing("inbox/sub/deeper/vanished.csv", complete=False)
    s.mark_writing("inbox/subway.csv")  # a sibling whose name starts the same: not below it
    s.moved("inbox/sub", "inbox/sub2")
    s.moved("inbox/sub2/open.csv", "inbox/sub2/open.csv")  # onto itself: nothing changes
    assert dict(s.writers) == {"inbox/sub2/open.csv": 1, "inbox/subway.csv": 1}
    assert space(tmp_path).partials() == ["inbox/sub2/deeper/vanished.csv", "inbox/sub2/open.csv",
                                          "inbox/subway.csv"]
