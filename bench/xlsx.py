"""Excel input: feedd's pipeline on an .xlsx against openpyxl's read-only mode and calamine alone.

    python bench/xlsx.py [--rows 100000] [--rounds 3]

Writes an .xlsx of `--rows` rows x 10 columns once with openpyxl (write-only mode: ids, emails, names,
decimal numbers, date cells, enums, text, booleans, scores; about 0.1% invalid emails), then runs each
contender in its own process and prints rows/s, peak RSS and the ratios against both anchors:
(a) openpyxl `load_workbook(read_only=True)` iterating every row's values; (b) calamine alone
(`CalamineWorkbook.from_path`, `iter_rows`), which is what feedd reads with; (c) feedd's `process()` with
the same schema, mapping and rules as bench/pipeline.py, in one worker (the bomb checks included). Each
contender runs `--rounds` times and its fastest round counts.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import CONFIG, best  # the same schema, mapping and timing as the CSV bench

OPENPYXL = """
import sys
from openpyxl import load_workbook
book = load_workbook(sys.argv[1], read_only=True)
n = 0
for row in book.active.iter_rows(values_only=True):
    n += 1
book.close()
print("rows", n, file=sys.stderr)
"""

CALAMINE = """
import sys
from python_calamine import CalamineWorkbook
sheet = CalamineWorkbook.from_path(sys.argv[1]).get_sheet_by_index(0)
n = 0
for row in sheet.iter_rows():
    n += 1
print("rows", n, file=sys.stderr)
"""

FEEDD = """
import sys
from feedd.config import load_config
from feedd.pipeline.process import Job, process
cfg = load_config(sys.argv[3])
o = process(Job("bench", sys.argv[1], "people.xlsx", cfg.pipelines["bench-people"], cfg.schemas["person"], sys.argv[2]))
assert o.status == "completed", o.error
print(o.status, o.valid, o.invalid, file=sys.stderr)
"""


def generate(path: Path, rows: int) -> None:
    from openpyxl import Workbook

    rng = random.Random(7)
    firsts = ["Ann", "Bob", "Chloé", "Dmitri", "Eve", "Fatima", "Gus"]
    book = Workbook(write_only=True)
    sheet = book.create_sheet("People")
    sheet.append(["ID", "Email", "First", "Last", "Salary", "Joined", "Status", "Note", "Active", "Score"])
    for i in range(1, rows + 1):
        bad = rng.random() < 0.001
        sheet.append([
            i, "broken-email" if bad else f"user{i}@example.org", rng.choice(firsts), f"Last{i % 997}",
            rng.randint(2000000, 20000000) / 100, date(2000 + rng.randint(10, 25), rng.randint(1, 12), rng.randint(1, 28)),
            rng.choice(["Active", "leave", "terminated"]), f"said hello, {i}", rng.choice([True, False]),
            round(rng.random() * 100, 2),
        ])
    book.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="feedd-xlsx-bench-"))
    data = work / "people.xlsx"
    generate(data, args.rows)
    # The CSV bench's pipeline, reading the workbook: the `joined` cells are dates already, so no transform.
    config = CONFIG.replace('match: ["inbox/*.csv"]', 'match: ["inbox/*.xlsx"]\n    format: {type: xlsx, sheet: People}')
    config = config.replace('joined: {from: "Joined", transforms: [{date: "%Y-%m-%d"}]}', 'joined: "Joined"')
    (work / "feedd.yaml").write_text(config)
    results = {
        "openpyxl read-only": best(args.rounds, OPENPYXL, str(data)),
        "calamine alone": best(args.rounds, CALAMINE, str(data)),
        "feedd": best(args.rounds, FEEDD, str(data), str(work / "out"), str(work / "feedd.yaml")),
    }
    openpyxl_rate = args.rows / results["openpyxl read-only"][0]
    calamine_rate = args.rows / results["calamine alone"][0]
    print(f"{args.rows:,} rows x 10 columns, {data.stat().st_size / 2**20:.1f} MiB")
    for name, (seconds, peak, cpu) in results.items():
        rate = args.rows / seconds
        print(f"{name:18} {rate:9,.0f} rows/s  {rate / openpyxl_rate:5.2f}x openpyxl  {rate / calamine_rate:5.2f}x calamine"
              f"  peak RSS {peak:5.0f} MiB  ({args.rows / cpu:,.0f} rows per CPU second)")
    print(json.dumps({k: {"rows_per_s": round(args.rows / s), "peak_rss_mib": round(p), "rows_per_cpu_s": round(args.rows / c)}
                      for k, (s, p, c) in results.items()}))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
