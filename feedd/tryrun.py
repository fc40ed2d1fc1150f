"""`feedd try`: one file through a pipeline, in-process, with the same code as a real run; writes nothing."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from feedd import pgp
from feedd.config import Config
from feedd.config.units import suggest
from feedd.pipeline.process import Job, process


def try_file(config: Config, pipeline: str, file: str) -> int:
    """Print counts, the mapping with its reasons and the first errors; 0 if the run would complete."""
    pipe = config.pipelines.get(pipeline)
    if pipe is None:
        print(f"feedd try: no pipeline {pipeline!r}{suggest(pipeline, config.pipelines)}", file=sys.stderr)
        return 1
    path = Path(file)
    if not path.is_file():
        print(f"feedd try: {file}: no such file", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="feedd-try-") as scratch:  # outputs are thrown away
        job = Job("try", str(path), path.name, pipe, config.schemas[pipe.schema], scratch)
        keys = pgp.decryption(config, pipe.connection, path.name)
        if keys is not None:  # decrypted as a run would, with a throwaway GnuPG home
            keys = replace(keys, home=os.path.join(scratch, "gnupg"))
            plain = os.path.join(scratch, "input", pgp.plain_name(path.name))
            try:
                pgp.decrypt(keys, str(path), plain)
                job = replace(job, input_path=plain)
            except pgp.PgpError as exc:
                job = replace(job, failed=(exc.code, f"{path.name}: {exc.message}"))
            finally:
                pgp.stop_agent(Path(keys.home))
        outcome = process(job)
    print(f"{path.name} -> {pipe.name}: {outcome.status}")
    print(f"  rows {outcome.rows}   valid {outcome.valid}   invalid {outcome.invalid}"
          + (f"   warned {outcome.warned}" if outcome.warned else ""))
    if outcome.detected:
        d = outcome.detected
        extra = (f", delimiter {d['delimiter']!r}" if d.get("delimiter") else "") + \
            (f", {d['compression']}" if d.get("compression") else "")
        print(f"  read as {d['format']}" + (f", {d['encoding']}" if d.get("encoding") else "") + extra)
    if outcome.reasons:
        print("  mapping:")
        width = max(len(t) for t in outcome.reasons)
        for target, why in outcome.reasons.items():
            source = why["source"] if why["source"] is not None else f"<{why['reason']}>"
            score = f" {why['score']:.2f}" if why["reason"] == "similar" else ""
            print(f"    {target:<{width}}  <- {source}  ({why['reason']}{score})")
            if "fallback" in why:
                print(f"    {'':<{width}}     {why['fallback']}")
    if outcome.error is not None:
        print(f"  error: {outcome.error[0]}: {outcome.error[1]}")
    if outcome.errors:
        print("  first errors:")
        print(f"    {'row':>6}  {'field':<16}  {'code':<12}  message")
        for row, field, code, message in outcome.errors[:20]:
            print(f"    {row:>6}  {field or '-':<16}  {code:<12}  {message}")
    if outcome.warnings:
        print("  first warnings (the rows stay valid):")
        print(f"    {'row':>6}  {'field':<16}  {'code':<12}  message")
        for row, field, code, message in outcome.warnings[:20]:
            print(f"    {row:>6}  {field or '-':<16}  {code:<12}  {message}")
    return 0 if outcome.status == "completed" else 1
