"""A reviewer's decision on a run, as the run is processed with it: their mapping laid over the pipeline's
configured one, and the error rate they accepted.

A decision is stored on the run (`meta.review.decision`) as the JSON it came in, and turned into a
pipeline each time the run is processed, here: by the runner for the real pass, by the review service
for a preview. A mapping is judged by the config file's own validator, so an API body and a YAML
`mappings` block mean the same and are refused with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from feedd.config.managed import located
from feedd.config.pipelines import _mappings
from feedd.config.reader import At, Reader
from feedd.config.source import Loc, LocMap
from feedd.config.units import suggest
from feedd.config.values import FieldMapping, Pipeline, Schema

_HERE = Loc("review", Path("."), 0)


class InvalidDecision(ValueError):
    """A decision that cannot be applied; `details` locate each problem (`{path, message}`)."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        first = details[0]
        super().__init__(f"{first['path']}: {first['message']}" if first["path"] else first["message"])
        self.details = details


def parse_mapping(raw: Any, schema: Schema, headers: Sequence[str] | None = None) -> tuple[FieldMapping, ...]:
    """`{field: header or {from, transforms, default, value, template}}` as FieldMappings; InvalidDecision
    naming every problem. With `headers`, each column named must be one of them."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise InvalidDecision([{"path": "mapping", "message": "expected an object of schema field -> header"}])
    r = Reader({})
    tree = located({"mappings": _literal(dict(raw))}, _HERE)
    assert isinstance(tree, LocMap)
    parsed = _mappings(r, tree, At(_HERE, ""), schema)
    details = [{"path": issue.path, "message": issue.message} for issue in r.issues]
    if headers is not None:
        known = list(headers)
        for m in parsed:
            columns = [m.source] if m.source else []
            for column in columns:
                if column not in known:
                    details.append(
                        {
                            "path": f"mappings.{m.target}",
                            "message": f"no column {column!r} in the input's header{suggest(column, known)}",
                        }
                    )
    if details:
        raise InvalidDecision(
            [{"path": d["path"].replace("mappings", "mapping", 1), "message": d["message"]} for d in details]
        )
    return parsed


def _literal(value: Any) -> Any:
    """Strings kept as written: a column may be called `${x}`, which the config reader would expand."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, Mapping):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value


def overlay(pipe: Pipeline, chosen: Sequence[FieldMapping], raw: Mapping[str, Any]) -> Pipeline:
    """The pipeline with the chosen mappings in place of the configured ones. A field given as a plain
    header keeps its configured transforms and default: the reviewer chose the column, not the rest."""
    configured = {m.target: m for m in pipe.mappings}
    out = dict(configured)
    for m in chosen:
        old = configured.get(m.target)
        if isinstance(raw.get(m.target), str) and old is not None:
            out[m.target] = replace(old, source=m.source, template=None, value=None, has_value=False)
        else:
            out[m.target] = m
    return replace(pipe, mappings=tuple(out.values()))


def apply(
    pipe: Pipeline, schema: Schema, decision: Mapping[str, Any] | None, headers: Sequence[str] | None = None
) -> tuple[Pipeline, tuple[str, ...]]:
    """(the pipeline for this run, the fields the reviewer mapped). `decision`: `{mapping?, maxErrorRate?}`;
    None leaves the pipeline as it is. InvalidDecision when it does not fit the schema (or `headers`)."""
    if not decision:
        return pipe, ()
    raw = decision.get("mapping") or {}
    chosen = parse_mapping(raw, schema, headers)
    pipe = overlay(pipe, chosen, raw)
    rate = decision.get("maxErrorRate")
    if rate is not None:
        pipe = replace(pipe, max_error_rate=float(rate))
    return pipe, tuple(m.target for m in chosen)
