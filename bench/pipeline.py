"""Pipeline throughput: feedd's worker against a plain csv+json loop (the floor) and frictionless.

    python bench/pipeline.py [--rows 1000000] [--rounds 3] [--flat-rows 4000000] [--rules]

Generates a CSV with 10 columns (ids, emails, names, decimals, dates, enums, quoted free text,
booleans; about 0.1% invalid rows), then runs each contender in its own process on it and prints rows/s,
peak RSS and the ratios: (a) the floor, `csv.DictReader` + orjson (json if orjson is missing) to JSONL
with no validation; (b) frictionless `validate` with an equivalent Table Schema, when installed;
(c) feedd's `process()` with a mapping and every rule on, in one worker. Each contender runs `--rounds`
times and its fastest round counts (the machine's noise only ever slows a round down). Then feedd runs
once more on a file `--flat-rows` long to show its peak memory does not grow with the file. `--rules` also
runs feedd with two cross-field rules and a lookup added to the same schema ("feedd+rules").
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """\
state_dir: ./var
schemas:
  person:
    fields:
      id:        {type: integer, required: true, unique: true, min: 1}
      email:     {type: email, required: true}
      first:     {type: string, max_length: 50}
      last:      {type: string, max_length: 50}
      salary:    {type: decimal, min: 0}
      joined:    {type: date, min: "2000-01-01"}
      status:    {type: enum, values: [active, leave, terminated]}
      note:      {type: string, max_length: 500}
      active:    {type: boolean}
      score:     {type: number, min: 0, max: 100}
connections:
  bench: {password_hash: "$argon2id$v=19$m=19456,t=2,p=1$r32hUGwXnLSq8lBLen9Gpg$MVU5SZl/SCrA7wC8teLjH3SdPj3zaiZMnl77Jte5phk"}
pipelines:
  bench-people:
    connection: bench
    schema: person
    match: ["inbox/*.csv"]
    mappings:
      id: "ID"
      email: {from: "Email", transforms: [trim, lower]}
      first: "First"
      last: "Last"
      salary: "Salary"
      joined: {from: "Joined", transforms: [{date: "%Y-%m-%d"}]}
      status: {from: "Status", transforms: [lower]}
      note: "Note"
      active: "Active"
      score: "Score"
    max_error_rate: 0.5
"""

# Two cross-field rules and a lookup (of every surname the data uses), for `--rules`.
RULES = """\
    rules:
      - {when: "status == 'terminated'", require: [joined]}
      - {check: "score <= 100 or not active", message: "score above 100 for an active person"}
lookups:
  surnames: {file: ./surnames.csv, column: name}
"""

FLOOR = """
import csv, sys
try:
    import orjson
    dumps = lambda r: orjson.dumps(r).decode()
except ImportError:
    import json
    dumps = json.dumps
with open(sys.argv[1], newline="") as f, open(sys.argv[2], "w") as out:
    for row in csv.DictReader(f):
        out.write(dumps(row) + "\\n")
"""

FEEDD = """
import sys
from feedd.config import load_config
from feedd.pipeline.process import Job, process
cfg = load_config(sys.argv[3])
o = process(Job("bench", sys.argv[1], "people.csv", cfg.pipelines["bench-people"], cfg.schemas["person"], sys.argv[2]))
print(o.status, o.valid, o.invalid, file=sys.stderr)
"""

FRICTIONLESS = """
import sys
from frictionless import Resource, Schema, validate
schema = Schema.from_descriptor({"fields": [
    {"name": "ID", "type": "integer", "constraints": {"required": True, "unique": True, "minimum": 1}},
    {"name": "Email", "type": "string", "format": "email", "constraints": {"required": True}},
    {"name": "First", "type": "string", "constraints": {"maxLength": 50}},
    {"name": "Last", "type": "string", "constraints": {"maxLength": 50}},
    {"name": "Salary", "type": "number", "constraints": {"minimum": 0}},
    {"name": "Joined", "type": "date"},
    {"name": "Status", "type": "string", "constraints": {"enum": ["active", "Active", "leave", "terminated"]}},
    {"name": "Note", "type": "string", "constraints": {"maxLength": 500}},
    {"name": "Active", "type": "boolean"},
    {"name": "Score", "type": "number", "constraints": {"minimum": 0, "maximum": 100}},
]})
# frictionless refuses absolute paths as unsafe: give it the folder as basepath
folder, name = sys.argv[1].rsplit("/", 1)
report = validate(Resource(path=name, basepath=folder, schema=schema), limit_errors=10**9)
print("rows", report.tasks[0].stats["rows"], "errors", report.tasks[0].stats["errors"], file=sys.stderr)
print(report.valid, file=sys.stderr)
"""


def generate(path: Path, rows: int) -> None:
    rng = random.Random(7)
    firsts = ["Ann", "Bob", "Chloé", "Dmitri", "Eve", "Fatima", "Gus"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Email", "First", "Last", "Salary", "Joined", "Status", "Note", "Active", "Score"])
        for i in range(1, rows + 1):
            bad = rng.random() < 0.001
            w.writerow([
                i, "broken-email" if bad else f"user{i}@example.org", rng.choice(firsts), f"Last{i % 997}",
                f"{rng.randint(20000, 200000)}.{rng.randint(0, 99):02d}",
                f"20{rng.randint(10, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                rng.choice(["Active", "leave", "terminated"]), f'said "hello, {i}"\nsecond line',
                rng.choice(["true", "false"]), f"{rng.random() * 100:.2f}",
            ])


REPORT_RSS = "\nimport resource, sys\nprint('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"


def run(code: str, *args: str) -> tuple[float, float, float]:
    """Seconds, peak RSS (MiB) and CPU seconds of `code` run in a fresh interpreter (each reports its own
    peak). CPU time is what a busy machine disturbs least: other processes lengthen the wall time."""
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", code + REPORT_RSS, *args], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    rss = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("RSS ")]
    return seconds, (rss[-1] if rss else 0) / 1024, cpu


def best(rounds: int, code: str, *args: str) -> tuple[float, float, float]:
    """The fastest of `rounds` runs, with the largest peak RSS seen, and the least CPU time."""
    runs = [run(code, *args) for _ in range(rounds)]
    return min(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flat-rows", type=int, default=4_000_000, help="0 skips the memory-growth run")
    ap.add_argument("--rules", action="store_true", help="also run with two cross-field rules and a lookup")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="feedd-pipeline-bench-"))
    data = work / "people.csv"
    generate(data, args.rows)
    (work / "feedd.yaml").write_text(CONFIG)
    results: dict[str, tuple[float, float, float]] = {"floor": best(args.rounds, FLOOR, str(data), str(work / "floor.jsonl"))}
    try:
        import frictionless  # noqa: F401

        results["frictionless"] = best(1, FRICTIONLESS, str(data))  # slow and steady: one round
    except ImportError:
        print("frictionless not installed (pip install frictionless): skipped")
    results["feedd"] = best(args.rounds, FEEDD, str(data), str(work / "out"), str(work / "feedd.yaml"))
    if args.rules:
        (work / "surnames.csv").write_text("name\n" + "".join(f"Last{i}\n" for i in range(997)))
        ruled = CONFIG.replace("last:      {type: string, max_length: 50}",
                               "last:      {type: string, max_length: 50, in_lookup: surnames}")
        (work / "rules.yaml").write_text(ruled.replace("connections:", RULES + "connections:", 1))
        results["feedd+rules"] = best(args.rounds, FEEDD, str(data), str(work / "out-rules"), str(work / "rules.yaml"))
    floor_rate = args.rows / results["floor"][0]
    print(f"{args.rows:,} rows, {data.stat().st_size / 2**20:.0f} MiB")
    for name, (seconds, peak, cpu) in results.items():
        rate = args.rows / seconds
        print(f"{name:13} {rate:10,.0f} rows/s  {rate / floor_rate:5.2f}x floor  peak RSS {peak:6.0f} MiB  "
              f"({args.rows / cpu:,.0f} rows per CPU second)")
    if "feedd+rules" in results:
        print(f"feedd+rules / feedd: {results['feedd'][0] / results['feedd+rules'][0]:.2f}x wall, "
              f"{results['feedd'][2] / results['feedd+rules'][2]:.2f}x CPU")
    if "frictionless" in results:
        print(f"feedd / frictionless: {results['frictionless'][0] / results['feedd'][0]:.1f}x")
    summary = {k: {"rows_per_s": round(args.rows / s), "peak_rss_mib": round(p), "rows_per_cpu_s": round(args.rows / c)}
               for k, (s, p, c) in results.items()}
    if args.flat_rows:
        data.unlink()
        big = work / "people-big.csv"
        generate(big, args.flat_rows)
        seconds, peak, _ = run(FEEDD, str(big), str(work / "out-big"), str(work / "feedd.yaml"))
        print(f"feedd at {args.flat_rows:,} rows: {args.flat_rows / seconds:,.0f} rows/s, peak RSS {peak:.0f} MiB "
              f"({peak / results['feedd'][1]:.2f}x the peak at {args.rows:,})")
        summary["feedd_flat"] = {"rows": args.flat_rows, "rows_per_s": round(args.flat_rows / seconds),
                                 "peak_rss_mib": round(peak)}
    print(json.dumps(summary))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
