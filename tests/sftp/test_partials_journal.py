"""The partial-upload journal: what a restart replays, what it forgets, and how it stays short."""

from __future__ import annotations

import hashlib
import subprocess
import sys
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


def test_a_rewrite_keeps_the_lines_another_node_appended(tmp_path: Path) -> None:
    node_a, node_b = space(tmp_path), space(tmp_path)  # two nodes sharing one state_dir
    node_a.mark_writing("inbox/a.csv")
    node_b.mark_writing("inbox/b.csv")
    for i in range(spaces.JOURNAL_REWRITE_AT):  # B's journal grows long and B rewrites it
        node_b.mark_writing(f"inbox/f{i}.csv")
        node_b.done_writing(f"inbox/f{i}.csv", complete=True)
    assert Path(node_b.journal).read_bytes().count(b"\n") < spaces.JOURNAL_REWRITE_AT
    node_a.mark_writing("inbox/a2.csv")
    assert space(tmp_path).partials() == ["inbox/a.csv", "inbox/a2.csv", "inbox/b.csv"]
    node_b.refresh()  # B reads back what A recorded
    assert node_b.partials() == ["inbox/a.csv", "inbox/a2.csv", "inbox/b.csv"]


_NODE = """
import sys
from pathlib import Path
from feedd import spaces
from feedd.spaces import Space

spaces.JOURNAL_REWRITE_AT = 16  # rewrites all along, in between the other process's appends
root, who = Path(sys.argv[1]), sys.argv[2]
s = Space("acme", root / "acme", root / "partials" / "acme")
s.load_markers()
(root / f"ready-{who}").touch()
for _ in range(100_000):  # both start together (bounded: the test fails on a missing line, not here)
    if all((root / f"ready-{w}").exists() for w in "ab"):
        break
for i in range(3000):
    s.mark_writing(f"inbox/{who}{i}.csv")
    if i % 3:
        s.done_writing(f"inbox/{who}{i}.csv", complete=True)
"""


def test_two_processes_appending_and_rewriting_lose_no_line(tmp_path: Path) -> None:
    (tmp_path / "partials" / "acme").mkdir(parents=True)
    procs = [subprocess.Popen([sys.executable, "-c", _NODE, str(tmp_path), who]) for who in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    expected = sorted(f"inbox/{who}{i}.csv" for who in ("a", "b") for i in range(0, 3000, 3))
    assert space(tmp_path).partials() == expected
