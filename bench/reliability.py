"""Regenerate RELIABILITY.md: run every fault and bad-input test, collect the figures they print.

    python bench/reliability.py        (as root, for the tmpfs disk-full tests)

Each row of the table is a promise, the test that holds feedd to it, whether it held in this run, and
the figures that test printed (lines like `LOAD clients=200 files=5013 lost=0 ...`).
"""

from __future__ import annotations

import datetime
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (what could go wrong, what feedd does, test node ids, figure prefix or None)
ROWS: list[tuple[str, str, list[str], str | None]] = [
    ("kill -9 at each of 8 points of a file's way (spool, commit, processing, outputs, delivery, tus, "
     "multipart)", "restart resumes: every input processed once, every destination served, no partial file",
     ["tests/faults/test_failpoints.py"], "FAILPOINT"),
    ("kill -9 with deliveries and events pending", "all delivered after restart, one id per event or batch",
     ["tests/delivery/test_events.py::test_kill_9_with_deliveries_and_events_pending_loses_none"], None),
    ("kill -9 right after an SFTP upload, and during a long run", "the file is taken after restart; the run "
     "finishes with every row once", ["tests/sftp/test_crash.py", "tests/pipeline/test_runner_crash.py"], None),
    ("disk full mid-upload; free space under the low-water mark", "a clear SFTP error, the partial removed, "
     "earlier runs intact, uploads work again once space frees", ["tests/sftp/test_disk_full.py"], "DISKFULL"),
    ("hostile paths: `..`, absolute, links planted on disk, other spaces", "no generated path resolves outside "
     "the space", ["tests/faults/test_properties.py::test_no_path_leaves_the_space",
                   "tests/faults/test_properties.py::test_figures_of_the_path_fuzzing", "tests/sftp/test_jail.py"],
     "FUZZ"),
    ("any value through any transform and field type; any bytes as an input file", "a row error or a clean "
     "run-level error, never a traceback", [
         "tests/faults/test_properties.py::test_no_value_escapes_a_row_as_an_unexpected_exception",
         "tests/faults/test_properties.py::test_readers_fail_cleanly_on_any_bytes"], None),
    ("random sequences of multipart and tus calls", "the same answers as a plain reference model", [
        "tests/faults/test_properties.py::test_multipart_matches_its_reference_model",
        "tests/faults/test_properties.py::test_tus_matches_its_reference_model"], None),
    ("200 SFTP clients uploading at once", "no error, no file lost or taken twice",
     ["tests/faults/test_load.py::test_200_clients_upload_at_once_and_nothing_is_lost"], "LOAD"),
    ("300 sockets that never send a banner", "closed at login_grace; a real client logs in meanwhile",
     ["tests/faults/test_load.py::test_silent_sockets_are_closed_at_login_grace_while_a_real_client_logs_in"],
     "SILENT"),
    ("a password spray from many addresses", "each source banned",
     ["tests/faults/test_load.py::test_a_password_spray_from_many_addresses_gets_banned"], "SPRAY"),
    ("ssh-audit against the SFTP port", "no weak algorithm offered, strict kex on",
     ["tests/faults/test_audit.py"], None),
    ("a webhook receiver that fails, hangs or answers 410", "retried with backoff under stable ids; others "
     "not held up; 410 given up", ["tests/delivery/test_dispatch.py"], None),
]


def _covers(test_id: str, node: str) -> bool:
    """A row's test id (a file, or file::test) covers a run node (file::test or file::test[param])."""
    if "::" not in test_id:
        return node.startswith(test_id + "::")
    return node == test_id or node.startswith(test_id + "[")


def main() -> int:
    nodes = sorted({n for _, _, ids, _ in ROWS for n in ids})
    report = ROOT / ".reliability.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--timeout", "300",
                           f"--junitxml={report}", *nodes], cwd=ROOT, capture_output=True, text=True, check=False)
    figures: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        if m := re.match(r"^(FAILPOINT|DISKFULL|FUZZ|LOAD|SILENT|SPRAY) (.*)$", line.strip()):
            figures.setdefault(m.group(1), []).append(m.group(2))
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 - pytest's own report, written just now
        path = case.get("classname", "").replace(".", "/") + ".py"
        node = f"{path}::{case.get('name')}"
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[node] = "skipped" if case.find("skipped") is not None else "failed" if failed else "passed"
    report.unlink(missing_ok=True)
    lines = [
        "# Reliability",
        "",
        "What feedd survived in the last run of `python bench/reliability.py`, the test behind each line, and",
        "the figures that test printed. Regenerated by that command; not edited by hand.",
        "",
        f"Last run: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}.",
        "",
        "| fault or bad input | what feedd does | result | figures | tests |",
        "| --- | --- | --- | --- | --- |",
    ]
    for what, does, ids, prefix in ROWS:
        mine = {k: v for k, v in outcomes.items() if any(_covers(i, k) for i in ids)}
        counts = {s: list(mine.values()).count(s) for s in ("passed", "failed", "skipped")}
        result = (f"{counts['passed']} passed" + (f", **{counts['failed']} failed**" if counts["failed"] else "")
                  + (f", {counts['skipped']} skipped" if counts["skipped"] else "")) if mine else "not run"
        shown = "<br>".join(figures.get(prefix, [])) if prefix else ""
        tests = ", ".join(f"`{i}`" for i in ids)
        lines.append(f"| {what} | {does} | {result} | {shown} | {tests} |")
    total = {s: list(outcomes.values()).count(s) for s in ("passed", "failed", "skipped")}
    lines += ["", f"Totals: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped.", ""]
    (ROOT / "RELIABILITY.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if total["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
