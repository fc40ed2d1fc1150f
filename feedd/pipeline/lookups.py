"""Reference values for `in_lookup` fields: one column of a CSV file, loaded in each worker process.

Workers read the file themselves (nothing large crosses the process boundary) and keep what they read
per process, keyed by the file's path: a run uses the values in memory while the file's modification time
and size are unchanged and `refresh` (when set) has not passed, and reads the file again otherwise. A file
that has gone by the time a run starts fails that run with `lookup_missing`.

Small lists are a `frozenset` (the fastest test). Past `SET_MAX` values they are a `Values` table instead,
about 40 bytes a value where a set of strings takes about 90: all values in one string, and an open-addressing
table of their 64-bit hashes beside each one's place in that string. A hit is confirmed by comparing the
text itself, so the test is exact.
"""

from __future__ import annotations

import csv
import os
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from feedd.config.values import Lookup
from feedd.pipeline.read import ReadError

SET_MAX = 100_000  # up to this many values, a frozenset (about 9 MiB at 10 characters a value)
MIX = 0x9E3779B97F4A7C15  # the same spreading multiplier as `unique` tables
MASK = (1 << 64) - 1
LENGTH_BITS = 24  # a slot's place: start << 24 | length (values up to 16 MiB, a string up to 1 TiB)


class Values:
    """A set of strings in compact form; generated rows test membership with `values_code`'s lines
    (`__contains__` is the same test, for everything else)."""

    __slots__ = ("blob", "count", "extra", "mask", "places", "shift", "table")

    def __init__(self, values: Iterable[str], count: int) -> None:
        """`values` (read once, repeats allowed), of which there are at most `count`."""
        bits = max(4, (count * 2).bit_length())  # at most half full: short probes, misses included
        self.table = array("Q", bytes(8 << bits))
        self.places = array("Q", bytes(8 << bits))
        self.shift, self.mask = 64 - bits, (1 << bits) - 1
        self.blob = ""
        self.count = 0
        extra: list[str] = []  # values whose 64-bit hash another value already has
        # While building, a second hash per slot tells a repeated value from a different one with the same
        # hash, without looking back into the text not yet joined (both alike by chance: about 1 in 2**128).
        second = array("Q", bytes(8 << bits))
        parts: list[str] = []  # the text, joined a chunk at a time: no million small strings held at once
        chunk: list[str] = []
        table, places, shift, mask, start = self.table, self.places, self.shift, self.mask, 0
        for value in values:
            k = (hash(value) * MIX) & MASK or 1
            i = k >> shift
            while (x := table[i]) and x != k:
                i = (i + 1) & mask
            if x:  # the same hash: the same value again (skipped), or a rare collision
                if second[i] != hash((value, 1)) & MASK:
                    extra.append(value)
                continue
            table[i], places[i], second[i] = k, start << LENGTH_BITS | len(value), hash((value, 1)) & MASK
            start += len(value)
            self.count += 1
            chunk.append(value)
            if len(chunk) >= 4096:
                parts.append("".join(chunk))
                chunk.clear()
        del second
        self.blob = "".join([*parts, *chunk])
        self.extra = frozenset(extra)
        self.count += len(self.extra)

    def text(self, slot: int) -> str:
        place = self.places[slot]
        start = place >> LENGTH_BITS
        return self.blob[start:start + (place & ((1 << LENGTH_BITS) - 1))]

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        k = (hash(value) * MIX) & MASK or 1
        i = k >> self.shift
        while x := self.table[i]:
            if x == k:
                return self.text(i) == value or value in self.extra
            i = (i + 1) & self.mask
        return False

    def __len__(self) -> int:
        return self.count


def values_code(name: str, s: str) -> list[str]:
    """Lines that set `ok` to whether the text in variable `s` is in the `Values` table called `name`: the
    probe of `__contains__` inlined, one call fewer per row."""
    return [
        f"k = (hash({s}) * _MIX) & _MASK or 1; t = {name}.table; i = k >> {name}.shift",
        f"while (x := t[i]) and x != k: i = (i + 1) & {name}.mask",
        f"if x: p = {name}.places[i]; st = p >> {LENGTH_BITS}; "
        f"ok = len({s}) == (p & {(1 << LENGTH_BITS) - 1}) and {name}.blob[st:st + len({s})] == {s} "
        f"or {s} in {name}.extra",
        "else: ok = False",
    ]


@dataclass(slots=True)
class _Loaded:
    mtime_ns: int
    size: int
    at: float  # time.monotonic() of the read
    values: frozenset[str] | Values


_CACHE: dict[tuple[Path, str], _Loaded] = {}


def values(lookup: Lookup) -> frozenset[str] | Values:
    """The lookup's values as this process has them, read again when the file changed or `refresh` passed.
    Raises ReadError(`lookup_missing`) when the file cannot be read or lacks the column."""
    try:
        st = os.stat(lookup.file)
    except OSError as exc:
        raise ReadError("lookup_missing", f"lookup {lookup.name!r}: cannot read {str(lookup.file)!r}: "
                                          f"{exc.strerror or exc}") from None
    have = _CACHE.get((lookup.file, lookup.column))
    now = time.monotonic()
    if have is not None and (have.mtime_ns, have.size) == (st.st_mtime_ns, st.st_size) \
            and (lookup.refresh is None or now - have.at < lookup.refresh):
        return have.values
    found = read(lookup)
    _CACHE[lookup.file, lookup.column] = _Loaded(st.st_mtime_ns, st.st_size, now, found)
    return found


def read(lookup: Lookup) -> frozenset[str] | Values:
    """Every non-empty value of the lookup's column (stripped), as a set or a `Values` table."""
    try:
        with open(lookup.file, encoding="utf-8-sig", newline="") as f:
            rows = csv.reader(f, delimiter="\t" if lookup.file.suffix.lower() == ".tsv" else ",")
            header = next(rows, [])
            if lookup.column not in header:
                raise ReadError("lookup_missing", f"lookup {lookup.name!r}: {str(lookup.file)!r} has no column "
                                                  f"{lookup.column!r} any more")
            j = header.index(lookup.column)
            count = sum(1 for _ in rows)  # a first pass: how large a table, without holding every value
            f.seek(0)
            rows = csv.reader(f, delimiter="\t" if lookup.file.suffix.lower() == ".tsv" else ",")
            next(rows, None)
            found = (v for row in rows if len(row) > j and (v := row[j].strip()))  # repeats are skipped
            return frozenset(found) if count <= SET_MAX else Values(found, count)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReadError("lookup_missing", f"lookup {lookup.name!r}: cannot read {str(lookup.file)!r}: {exc}") from None
