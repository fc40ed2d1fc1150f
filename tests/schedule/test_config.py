"""The config keys of expected arrivals and retention: judged at load, with errors that say what to write."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedd.config import EVENT_TYPES, load_config
from feedd.errors import ConfigError
from tests.helpers import MINIMAL, write


def load(tmp_path: Path, pipeline: str = "", top: str = "") -> object:
    text = MINIMAL + "".join(f"    {line}\n" for line in pipeline.splitlines()) + top
    return load_config(write(tmp_path, "feedd.yaml", text), env={})


def errors(tmp_path: Path, pipeline: str = "", top: str = "") -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, pipeline, top)
    return "\n".join(str(i) for i in err.value.issues)


def test_expect_and_retention_load(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'expect: {cron: "0 6 * * 1-5", timezone: Europe/Berlin, grace: 30m, min_rows: 1}\n'
        "retention: {inputs: null, outbox: 7d}",
        "retention: {inputs: 30d, outputs: 30d, outbox: 14d, after_ack: 1d, sweep_every: 10m}\n",
    )
    pipe = config.pipelines["demo-contacts"]  # type: ignore[attr-defined]
    assert pipe.expect.cron == "0 6 * * 1-5" and pipe.expect.grace == 1800 and pipe.expect.min_rows == 1
    assert pipe.expect.timezone == "Europe/Berlin" and pipe.expect.notify_partner is False
    # the pipeline's own keys over the top level's; null keeps forever
    assert (pipe.retention.inputs, pipe.retention.outputs, pipe.retention.outbox, pipe.retention.after_ack) == (
        None,
        30 * 86400,
        7 * 86400,
        86400,
    )
    assert config.retention.inputs == 30 * 86400 and config.sweep_every == 600  # type: ignore[attr-defined]


def test_defaults_keep_everything_and_expect_nothing(tmp_path: Path) -> None:
    config = load(tmp_path)
    pipe = config.pipelines["demo-contacts"]  # type: ignore[attr-defined]
    assert pipe.expect is None
    assert (pipe.retention.inputs, pipe.retention.outputs, pipe.retention.outbox) == (None, None, None)


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ('expect: {cron: "0 25 * * *"}', "expect.cron: invalid cron expression '0 25 * * *': Bad hour"),
        ('expect: {cron: "every day"}', "invalid cron expression 'every day'"),
        ("expect: {grace: 1h}", "expect: missing required key 'cron'"),
        (
            'expect: {cron: "0 6 * * *", timezone: Europe/Berln}',
            "expect.timezone: unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)",
        ),
        ('expect: {cron: "0 6 * * *", when: 1}', "expect.when: unknown key"),
        ("retention: {inputs: 0s}", "retention.inputs: expected an age above 0"),
        ("retention: {inputz: 1d}", "retention.inputz: unknown key (did you mean 'inputs'?)"),
    ],
)
def test_bad_keys_are_located_and_explained(tmp_path: Path, pipeline: str, message: str) -> None:
    assert message in errors(tmp_path, pipeline)


def test_only_the_top_level_says_how_often_to_sweep(tmp_path: Path) -> None:
    assert "retention.sweep_every: unknown key" in errors(tmp_path, "retention: {sweep_every: 1h}")


def test_a_missed_arrival_is_an_event_webhooks_may_subscribe_to(tmp_path: Path) -> None:
    assert "arrival.missed" in EVENT_TYPES
    load(tmp_path, top='webhooks:\n  - {url: "http://127.0.0.1:9/", events: ["arrival.*"]}\n')
