"""A large upload processed in stretches by several workers: the joined outputs are exactly what one pass
over the whole file makes, and anything only one pass can decide goes back to one pass."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from feedd.config import Config, load_config
from feedd.http.uploads import splice
from feedd.pipeline import runner
from feedd.pipeline.process import Job, Outcome, Span, Stretch, merge, process, process_stretch
from feedd.pipeline.runner import stretches
from feedd.pipeline.validate import Unique, repeats
from tests.helpers import DEMO_HASH, write

CONFIG = f"""\
state_dir: ./var
schemas:
  order:
    fields:
      order_id: {{type: string, required: true, unique: true}}
      n:        {{type: integer, required: true, unique: true}}
      amount:   {{type: decimal, min: 0}}
      note:     {{type: string}}
connections:
  acme: {{password_hash: "{DEMO_HASH}"}}
pipelines:
  orders-out:
    connection: acme
    schema: order
    direction: outbound
    format: {{type: json}}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write(tmp_path, "feedd.yaml", CONFIG), env={})


def part(first: int, count: int, bad: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Orders `first`.. with a nested note now and then; the numbers in `bad` get a negative amount."""
    return [{"order_id": f"O{i:05d}", "n": i, "amount": f"-{i}.5" if i in bad else f"{i}.5",
             "note": {"tag": i} if i % 7 == 0 else f"=note {i}, \"q\""} for i in range(first, first + count)]


def upload(tmp_path: Path, parts: list[list[dict[str, Any]]]) -> tuple[Path, list[list[int]]]:
    paths = [write(tmp_path, f"part{k}.json", json.dumps(p, indent=1 if k % 2 else None))
             for k, p in enumerate(parts)]
    spans, digest = splice(paths, tmp_path / "assembled.json")
    assert digest == hashlib.sha256((tmp_path / "assembled.json").read_bytes()).hexdigest()
    return tmp_path / "assembled.json", [[s, e, len(p)] for (s, e), p in zip(spans, parts, strict=True)]


def job(config: Config, path: Path, out: Path, fmt: str = "csv") -> Job:
    pipe = config.pipelines["orders-out"]
    return Job("R1", str(path), "orders.json", replace(pipe, output=replace(pipe.output, format=fmt)),
               config.schemas["order"], str(out))


def in_stretches(whole: Job, spans: list[Span]) -> list[Stretch]:
    return [process_stretch(replace(whole, out_dir=f"{whole.out_dir}/stretch-{i}", span=span))
            for i, span in enumerate(spans)]


def outputs(outcome: Outcome) -> dict[str, bytes]:
    paths = {"records": outcome.records_path, "api": outcome.records_jsonl_path, "rejects": outcome.rejects_path,
             "rejects.csv": outcome.rejects_csv_path, "report": outcome.report_path}
    return {name: Path(p).read_bytes() for name, p in paths.items() if p}


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_joined_stretches_are_byte_for_byte_one_pass(config: Config, tmp_path: Path, monkeypatch: Any,
                                                    fmt: str) -> None:
    monkeypatch.setattr(runner, "MIN_STRETCH", 1)
    dup = part(45, 1)[0]  # a repeat within the second part: the stretch itself rejects it
    path, parts = upload(tmp_path, [part(0, 40, bad=(3,)), [*part(40, 30, bad=(41, 69)), dup], [],
                                    part(70, 25, bad=(90,)), part(95, 10)])
    spans = stretches(parts, 3)
    assert [(s.before, s.end - s.start > 0) for s in spans] == [(0, True), (40, True), (71, True)]
    whole = process(job(config, path, tmp_path / "one", fmt))
    joined = merge(job(config, path, tmp_path / "many", fmt), in_stretches(job(config, path, tmp_path / "many", fmt),
                                                                          spans))
    assert joined is not None and joined.stretches == 3
    assert (joined.rows, joined.valid, joined.invalid) == (whole.rows, whole.valid, whole.invalid) == (106, 101, 5)
    assert joined.errors == whole.errors
    assert [e[0] for e in joined.errors] == [4, 42, 70, 71, 71, 92]
    assert outputs(joined) == outputs(whole)
    assert not [p for p in os.listdir(tmp_path / "many") if p.startswith("stretch-")], "scratch is removed"


def test_a_value_in_two_stretches_goes_back_to_one_pass(config: Config, tmp_path: Path) -> None:
    path, parts = upload(tmp_path, [part(0, 20), part(20, 20), [*part(40, 5), part(3, 1)[0]]])
    spans = [Span(p[0], p[1], sum(q[2] for q in parts[:k])) for k, p in enumerate(parts)]
    whole = job(config, path, tmp_path / "many")
    pieces = in_stretches(whole, spans)
    assert all(p.outcome.invalid == 0 for p in pieces), "no stretch sees the repeat on its own"
    assert merge(whole, pieces) is None
    assert not [p for p in os.listdir(tmp_path / "many") if p.startswith("stretch-")], "scratch is removed"
    (tmp_path / "many" / "stretch-7").mkdir()  # as a crash mid-stretch would leave it
    one = process(whole)
    assert not (tmp_path / "many" / "stretch-7").exists(), "one pass clears what an earlier try left"
    assert [(e[0], e[1], e[2]) for e in one.errors] == [(46, "order_id", "unique"), (46, "n", "unique")]


def test_stretches_hashed_under_different_seeds_are_not_compared(config: Config, tmp_path: Path) -> None:
    path, parts = upload(tmp_path, [part(0, 20), part(20, 20)])
    spans = [Span(p[0], p[1], 20 * k) for k, p in enumerate(parts)]
    whole = job(config, path, tmp_path / "many")
    pieces = in_stretches(whole, spans)
    assert merge(whole, pieces) is not None
    pieces[1].probe += 1
    assert merge(whole, pieces) is None


def test_a_failed_stretch_goes_back_to_one_pass(config: Config, tmp_path: Path) -> None:
    path, parts = upload(tmp_path, [part(0, 20), part(20, 20)])
    whole = job(config, path, tmp_path / "many")
    pieces = in_stretches(whole, [Span(parts[0][0], parts[0][1], 0), Span(parts[1][0], parts[1][1] + 50, 20)])
    assert pieces[1].outcome.status == "failed"
    assert merge(whole, pieces) is None


def test_repeats_across_tables() -> None:
    def table(values: list[Any], ints: bool) -> Unique:
        t = Unique(ints=ints)
        for v in values:
            (t.check_int if ints else t.check)(v)
        return t

    assert not repeats([table(list(range(0, 70_000)), True), table(list(range(70_000, 140_000)), True)])
    assert repeats([table([1, 5], True), table([9], True), table([200_000, 5], True)])
    assert not repeats([table(["a", "b"], False), table(["c"], False), table(["d", 1.5], False)])
    assert repeats([table(["a", "b"], False), table(["c"], False), table(["d", "b"], False)])
    sparse = table([i << 20 for i in range(300)], True)  # too sparse for bitmaps
    assert not sparse.dense
    assert repeats([table([7], True), sparse]), "bitmaps and hashes are not compared: one pass decides"


def test_repeats_past_the_set_size_probe_one_key_at_a_time(monkeypatch: Any) -> None:
    from feedd.pipeline import validate

    monkeypatch.setattr(validate, "SET_KEYS", 2)
    first, second = Unique(), Unique()
    for v in ("a", "b", "c"):
        first.check(v)
    second.check("d")
    assert not repeats([first, second])
    second.check("b")
    assert repeats([first, second])


def test_parts_are_grouped_into_even_stretches(monkeypatch: Any) -> None:
    parts = [[1 + 10 * k, 10 + 10 * k, 10_000] for k in range(10)]
    assert [(s.start, s.end, s.before) for s in stretches(parts, 2)] == [(1, 50, 0), (51, 100, 50_000)]
    assert [s.before for s in stretches(parts, 4)] == [0, 30_000, 50_000, 80_000]
    assert stretches(parts, 1) == [] and stretches(parts[:1], 2) == [], "one worker or one part: one pass"
    assert len(stretches(parts, 16)) == 10, "never more stretches than parts"
    assert stretches([[1, 10, 15_000]] * 2 + [[11, 20, 4_999]], 4) != [] and stretches([[1, 10, 19_999]] * 1, 4) == []
    assert stretches("not parts", 2) == [] and stretches([[1, 2]], 2) == []


def test_unique_tables_start_at_the_size_the_rows_need(config: Config) -> None:
    from feedd.pipeline.mapping import compile_row, plan, unique_tables

    pipe, schema = config.pipelines["orders-out"], config.schemas["order"]
    headers = ["order_id", "n", "amount", "note"]

    def sizes(rows: int) -> tuple[int, int]:
        tables = unique_tables(compile_row(pipe, schema, headers, plan(pipe, schema, headers), rows), schema)
        return tables["order_id"].bits, tables["n"].bits

    assert sizes(0) == (16, 16)
    assert sizes(100_000) == (18, 16), "strings: room for 100,000 keys under 70% full; ints start as bitmaps"
    row_fn = compile_row(pipe, schema, headers, plan(pipe, schema, headers), 100_000)
    table = unique_tables(row_fn, schema)["order_id"]
    for i in range(100_000):
        assert row_fn([f"O{i}", i, "1", None])[1] is None
    assert table.bits == 18 and table.count == 100_000, "no growth on the way"
    assert sizes(10**9) == (24, 16), "a huge hint takes at most 128 MiB up front"


@pytest.mark.parametrize(("egress", "max_error_rate"), [("all", 1.0), ("valid_only", 0.02)])
def test_the_error_rate_and_egress_apply_to_the_whole_run(config: Config, tmp_path: Path, egress: str,
                                                          max_error_rate: float) -> None:
    path, parts = upload(tmp_path, [part(0, 50, bad=(1, 2)), part(50, 50, bad=(60,))])
    spans = [Span(p[0], p[1], 50 * k, 50) for k, p in enumerate(parts)]
    whole = job(config, path, tmp_path / "many")
    whole = replace(whole, pipeline=replace(whole.pipeline, egress=egress, max_error_rate=max_error_rate))
    one = process(replace(whole, out_dir=str(tmp_path / "one")))
    joined = merge(whole, in_stretches(whole, spans))
    assert joined is not None
    assert (joined.status, joined.error) == (one.status, one.error)
    assert outputs(joined)["records"] == outputs(one)["records"]
    if egress == "all":
        assert joined.status == "completed" and outputs(joined)["records"].count(b"\n") == 101, "invalid kept"
    else:
        assert joined.status == "failed" and joined.error is not None and joined.error[0] == "too_many_errors"
        assert "3 of 100 rows are invalid" in joined.error[1], "counted over every stretch, not per stretch"


def test_many_parts_are_kept_with_the_run_as_a_few_adjacent_groups() -> None:
    from feedd.http.uploads import coarse

    parts = [[1 + 10 * k, 9 + 10 * k, 100] for k in range(1000)]
    groups = coarse(parts)
    assert len(groups) <= 64 and sum(g[2] for g in groups) == 100_000
    assert groups[0][0] == 1 and groups[-1][1] == parts[-1][1]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(groups)), "in order, not overlapping"
    assert coarse(parts[:10]) == parts[:10]
    assert [s.before for s in stretches(groups, 2)] == [0, 51_200], "split at the group nearest half"
