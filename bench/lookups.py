"""Memory and speed of a large lookup: N reference values read from a CSV, as a worker holds them.

    python bench/lookups.py [--values 1000000] [--length 10]

Writes a CSV of N distinct codes (`--length` characters each), then in a fresh interpreter loads it the
way a worker does (`feedd.pipeline.lookups.values`) and prints the memory it holds afterwards (the sizes
of its parts), how much the process's peak RSS grew while reading, and the rate of membership tests
(half hits, half misses) through the same lines a compiled row runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = """
import resource, sys, time
from pathlib import Path
from feedd.config.values import Lookup
from feedd.pipeline import lookups
from feedd.pipeline.validate import BASE_NAMESPACE, build
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
found = lookups.values(Lookup("codes", Path(sys.argv[1]), "code"))
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
kind = type(found).__name__
if isinstance(found, frozenset):
    held = sys.getsizeof(found) + sum(sys.getsizeof(v) for v in found)
else:
    held = sum(sys.getsizeof(x) for x in (found.table, found.places, found.blob, found.extra))
if isinstance(found, frozenset):
    test = build("def test(lk):\\n    return lk in _lookup", {"_lookup": found}, "test")
else:
    body = "\\n".join("    " + line for line in lookups.values_code("_lookup", "lk"))
    test = build("def test(lk):\\n" + body + "\\n    return ok", {"_lookup": found}, "test")
n = int(sys.argv[2])
probes = [f"C{i:0{int(sys.argv[3]) - 1}d}" for i in range(0, 2 * n, max(1, 2 * n // 200_000) | 1)]
t0 = time.perf_counter()
hits = sum(1 for p in probes if test(p))
rate = len(probes) / (time.perf_counter() - t0)
print(f"{len(found):,} values as {kind}: read in {seconds:.2f} s; held {held / 2**20:.1f} MiB; "
      f"peak RSS growth while reading {peak / 1024:.1f} MiB (interpreter and imports {base / 1024:.0f} MiB before)")
print(f"membership tests: {rate:,.0f}/s ({hits} hits of {len(probes)})")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=1_000_000)
    ap.add_argument("--length", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="feedd-lookup-bench-") as folder:
        path = Path(folder) / "codes.csv"
        with open(path, "w") as f:
            f.write("code,name\n")
            for i in range(0, 2 * args.values, 2):  # even numbers: the odd ones probe misses
                f.write(f"C{i:0{args.length - 1}d},x\n")
        subprocess.run([sys.executable, "-c", MEASURE, str(path), str(args.values), str(args.length)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
