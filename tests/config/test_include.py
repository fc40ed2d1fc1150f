"""`include`: conf.d fragments merged by name; a name defined twice names both files."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedd.config import load_config
from feedd.errors import ConfigError
from tests.helpers import DEMO_HASH, MINIMAL, write

CONNECTION = f"""\
connections:
  acme:
    password_hash: "{DEMO_HASH}"
"""
PIPELINE = """\
pipelines:
  acme-contacts:
    connection: acme
    schema: contact
    match: ["inbox/*.csv"]
"""


def test_included_fragments_are_merged(tmp_path: Path) -> None:
    main = write(tmp_path, "feedd.yaml", 'include: ["conf.d/*.yaml"]\n' + MINIMAL)
    write(tmp_path, "conf.d/acme.yaml", CONNECTION)
    write(tmp_path, "conf.d/acme-contacts.yaml", PIPELINE)
    cfg = load_config(main, env={})
    assert set(cfg.connections) == {"demo", "acme"}
    assert set(cfg.pipelines) == {"demo-contacts", "acme-contacts"}
    assert cfg.files == ("feedd.yaml", "conf.d/acme-contacts.yaml", "conf.d/acme.yaml")


def test_a_name_defined_in_two_files_names_both(tmp_path: Path) -> None:
    main = write(tmp_path, "feedd.yaml", 'include: ["conf.d/*.yaml"]\n' + MINIMAL)
    write(tmp_path, "conf.d/a.yaml", CONNECTION)
    write(tmp_path, "conf.d/b.yaml", "# the same partner, pasted twice\n" + CONNECTION)
    with pytest.raises(ConfigError) as info:
        load_config(main, env={})
    [issue] = info.value.issues
    assert str(issue) == ("conf.d/b.yaml:3: connections.acme: defined twice: in conf.d/a.yaml:2 "
                          "and in conf.d/b.yaml:3")


def test_a_singleton_section_in_two_files_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path, "feedd.yaml", 'include: ["extra.yaml"]\n' + MINIMAL)
    write(tmp_path, "extra.yaml", "log: {level: info}\n")
    with pytest.raises(ConfigError) as info:
        load_config(main, env={})
    assert [str(i) for i in info.value.issues] == ["extra.yaml:1: log: set twice: in feedd.yaml:3 and in extra.yaml:1"]


def test_errors_in_included_files_are_located_there(tmp_path: Path) -> None:
    main = write(tmp_path, "feedd.yaml", 'include: ["conf.d/*.yaml"]\n' + MINIMAL)
    write(tmp_path, "conf.d/acme.yaml", CONNECTION + "    quota: plenty\n")
    with pytest.raises(ConfigError) as info:
        load_config(main, env={})
    assert [str(i) for i in info.value.issues] == [
        "conf.d/acme.yaml:4: connections.acme.quota: expected a size like 10MiB or a number of bytes, got 'plenty'"
    ]


def test_webhooks_concatenate_and_nested_includes_resolve_from_their_file(tmp_path: Path) -> None:
    main = write(tmp_path, "feedd.yaml", 'include: ["conf.d/base.yaml"]\n' + MINIMAL
                 + 'webhooks:\n  - {url: "http://127.0.0.1:1/a"}\n')
    write(tmp_path, "conf.d/base.yaml", 'include: ["more/*.yaml"]\nwebhooks:\n  - {url: "http://127.0.0.1:1/b"}\n')
    write(tmp_path, "conf.d/more/acme.yaml", CONNECTION)
    cfg = load_config(main, env={})
    assert [w.url for w in cfg.webhooks] == ["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"]
    assert "acme" in cfg.connections


def test_include_cycle_reads_each_file_once(tmp_path: Path) -> None:
    main = write(tmp_path, "feedd.yaml", 'include: ["a.yaml"]\n' + MINIMAL)
    write(tmp_path, "a.yaml", 'include: ["feedd.yaml"]\n' + CONNECTION)
    cfg = load_config(main, env={})
    assert set(cfg.connections) == {"demo", "acme"}


def test_paths_in_fragments_resolve_against_the_main_config(tmp_path: Path) -> None:
    main = write(tmp_path, "feedd.yaml", 'include: ["conf.d/*.yaml"]\n' + MINIMAL)
    write(tmp_path, "conf.d/acme.yaml", CONNECTION + PIPELINE
          + "    destinations:\n      - {type: directory, path: ./out/acme}\n")
    cfg = load_config(main, env={})
    assert cfg.pipelines["acme-contacts"].destinations[0].path == tmp_path / "out" / "acme"
