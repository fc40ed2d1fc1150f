"""Config loading: every contract key parsed, every error located with file:line and a suggestion."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from feedd.config import DestinationType, FieldType, load_config
from feedd.config.pipelines import TRANSFORMS
from feedd.config.values import Address, Config
from feedd.credentials import verify_password
from feedd.errors import ConfigError
from feedd.model import Direction
from tests.helpers import DEMO_HASH, MINIMAL, REPO, write


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, name: str = "feedd.yaml") -> Config:
    return load_config(write(tmp_path, name, text), env=env or {})


def errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return [str(i) for i in info.value.issues]


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    assert cfg.state_dir == tmp_path / "var"
    assert cfg.sftp.spaces_dir == tmp_path / "var" / "spaces"
    assert cfg.sftp.settle == 2.0
    assert cfg.sftp.temp_patterns == ("*.part", "*.tmp", "*.filepart", ".*", "~*")
    assert cfg.sftp.ban.after_failures == 5 and cfg.sftp.ban.within == 300 and cfg.sftp.ban.duration == 900
    assert cfg.http.max_part_size == 64 * 1024**2
    assert cfg.http.tus.max_size == 5 * 1024**3 and cfg.http.tus.expire_after == 86400
    pipe = cfg.pipelines["demo-contacts"]
    assert pipe.direction is Direction.INBOUND and pipe.active and pipe.auto_map
    assert pipe.egress == "valid_only" and pipe.output.format == "jsonl"
    assert pipe.output.filename == "{stem}.{run_id}.{ext}"


def test_example_config_is_valid_and_uses_every_section() -> None:
    cfg = load_config(REPO / "feedd.example.yaml", env={})
    assert cfg.sftp.listen == (Address("127.0.0.1", 2222),)
    assert cfg.http.listen == (Address("127.0.0.1", 8080),)
    assert "demo" in cfg.connections and cfg.connections["demo"].password_hash
    assert len(cfg.files) > 1, "the example includes config/*.yaml"
    acme = cfg.pipelines["acme-employees"]
    # on: only what works out of the box; every other destination type is shown as a commented example
    assert {d.type for p in cfg.pipelines.values() for d in p.destinations} == {DestinationType.DIRECTORY,
                                                                                DestinationType.OUTBOX}
    assert cfg.webhooks == ()
    text = (REPO / "config" / "pipeline-acme-employees.yaml").read_text()
    assert all(f"# - {{type: {t}," in text for t in DestinationType if t not in ("directory", "outbox"))
    assert acme.allow_empty is False and acme.max_error_rate == 0.2
    used = {t.name for p in cfg.pipelines.values() for m in p.mappings for t in m.transforms}
    assert used == set(TRANSFORMS), f"transforms the example does not show: {set(TRANSFORMS) - used}"
    assert {f.type for f in cfg.schemas["employee"].fields} == set(FieldType)


def test_contract_example_parses(tmp_path: Path) -> None:
    write(tmp_path, "keys/x", "not read at config time")
    cfg = load(tmp_path, f"""\
        state_dir: ./var
        log: {{level: info, format: console}}
        sftp:
          listen: 127.0.0.1:2222
          host_keys: []
          spaces_dir: ./var/spaces
          settle: 2s
          temp_patterns: ["*.part", "*.tmp", "*.filepart", ".*", "~*"]
          done_marker: null
          login_grace: 30s
          idle_timeout: 10m
          max_sessions_per_connection: 10
          ban: {{after_failures: 5, within: 5m, for: 15m}}
        http:
          listen: 127.0.0.1:8080
          max_part_size: 64MiB
          api_keys:
            - {{name: billing-app, key_sha256: "{'ab' * 32}", connections: ["*"]}}
          tus: {{max_size: 5GiB, expire_after: 24h}}
        schemas:
          employee:
            fields:
              employee_id: {{type: string, required: true, unique: true, pattern: "^E[0-9]{{4,}}$"}}
              email:       {{type: email, required: true, aliases: ["e-mail", "mail"]}}
              full_name:   {{type: string, max_length: 200}}
              hired_on:    {{type: date}}
              salary:      {{type: decimal, min: 0}}
              active:      {{type: boolean, default: true}}
              status:      {{type: enum, values: [active, leave, terminated]}}
        connections:
          acme:
            password_hash: "{DEMO_HASH}"
            allowed_ips: ["0.0.0.0/0", "::/0"]
            enabled: true
            quota: 10GiB
            max_file_size: 1GiB
        pipelines:
          acme-employees:
            connection: acme
            schema: employee
            direction: inbound
            active: true
            match: ["inbox/*.csv", "inbox/**/*.csv"]
            format: {{type: auto, delimiter: auto, encoding: auto, header: true}}
            auto_map: true
            mappings:
              employee_id: "Employee ID"
              email:    {{from: "E-mail", transforms: [trim, lower]}}
              full_name: {{template: "{{First Name}} {{Last Name}}"}}
              hired_on: {{from: "Start Date", transforms: [{{date: "%m/%d/%Y"}}]}}
              status:   {{from: "Status", transforms: [lower, {{map: {{a: active, l: leave, t: terminated}}}}]}}
            egress: valid_only
            max_error_rate: 0.2
            reports: true
            output: {{format: jsonl, filename: "{{stem}}.{{run_id}}.{{ext}}"}}
            destinations:
              - {{type: directory, path: ./var/out/acme}}
              - {{type: webhook, url: "http://127.0.0.1:9000/ingest", secret: "${{ACME_HOOK_SECRET}}"}}
              - {{type: s3, bucket: feeds, prefix: "acme/", endpoint_url: "http://127.0.0.1:9100"}}
              - {{type: sftp, host: 127.0.0.1, port: 22, username: x, key_file: ./keys/x, path: /upload}}
              - {{type: outbox}}
        webhooks:
          - {{url: "http://127.0.0.1:9000/events", secret: "${{EVENTS_SECRET}}", events: ["run.*", "upload.completed"]}}
        """, env={"ACME_HOOK_SECRET": "s1", "EVENTS_SECRET": "s2"})
    conn = cfg.connections["acme"]
    assert conn.quota == 10 * 1024**3 and conn.max_file_size == 1024**3
    assert conn.allowed_ips == (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    pipe = cfg.pipelines["acme-employees"]
    assert pipe.max_error_rate == 0.2
    by_target = {m.target: m for m in pipe.mappings}
    assert by_target["employee_id"].source == "Employee ID"
    assert by_target["full_name"].template == "{First Name} {Last Name}"
    assert by_target["hired_on"].transforms[0].name == "date" and by_target["hired_on"].transforms[0].arg == "%m/%d/%Y"
    assert by_target["status"].transforms[1].arg == {"a": "active", "l": "leave", "t": "terminated"}
    webhook = next(d for d in pipe.destinations if d.type is DestinationType.WEBHOOK)
    assert webhook.secret == "s1"
    sftp = next(d for d in pipe.destinations if d.type is DestinationType.SFTP)
    assert sftp.key_file == tmp_path / "keys" / "x" and sftp.remote_path == "/upload" and sftp.port == 22
    assert cfg.webhooks[0].secret == "s2" and cfg.webhooks[0].events == ("run.*", "upload.completed")
    assert cfg.sftp.idle_timeout == 600 and cfg.sftp.ban.duration == 900
    status = cfg.schemas["employee"].field("status")
    assert status is not None and status.values == ("active", "leave", "terminated")


def test_misspelled_transform_names_file_line_path_and_suggestion(tmp_path: Path) -> None:
    text = MINIMAL + """\
    mappings:
      email: {from: "E-mail", transforms: [trim, lowr]}
"""
    [error] = errors(tmp_path, text)
    line = text.splitlines().index('      email: {from: "E-mail", transforms: [trim, lowr]}') + 1
    assert error == (f"feedd.yaml:{line}: pipelines.demo-contacts.mappings.email.transforms[1]: "
                     "unknown transform 'lowr' (did you mean 'lower'?)")


def test_every_error_is_reported_not_only_the_first(tmp_path: Path) -> None:
    found = errors(tmp_path, """\
        state_dir: ./var
        sftp: {listen: "127.0.0.1:0", settle: 2 weeks, ban: {afterfailures: 3}}
        http: {listen: nowhere, max_part_size: 10XB}
        log: {level: loud}
        schemas:
          contact:
            fields:
              email: {type: emial, required: yes-please}
              age: {type: integer, pattern: "^[0-9]+$"}
              kind: {type: enum}
        connections:
          demo: {password_hash: "plain-text", quota: lots}
          Bad/Name: {password_hash: "x"}
        pipelines:
          p1:
            connection: dmeo
            schema: contacts
            direction: sideways
            match: ["inbox/*.csv"]
            destinations:
              - {type: webhok, url: "http://127.0.0.1:1/x"}
              - {type: s3, prefix: "x/"}
        webhooks:
          - {url: "ftp://nope", events: ["run.finished"]}
        colour: blue
        """)
    text = "\n".join(found)
    expected = [
        "feedd.yaml:2: sftp.settle: unknown duration unit 'weeks'",
        "feedd.yaml:2: sftp.ban.afterfailures: unknown key (did you mean 'after_failures'?)",
        "feedd.yaml:3: http.listen: expected host:port",
        "feedd.yaml:3: http.max_part_size: unknown size unit 'XB'",
        "feedd.yaml:4: log.level: expected one of debug, info, warning, error, got 'loud'",
        "feedd.yaml:8: schemas.contact.fields.email.type: expected one of string",
        "(did you mean 'email'?)",
        "feedd.yaml:8: schemas.contact.fields.email.required: expected true or false",
        "feedd.yaml:9: schemas.contact.fields.age.pattern: 'pattern' applies to string, email and enum fields",
        "feedd.yaml:10: schemas.contact.fields.kind: an enum field needs 'values'",
        "feedd.yaml:12: connections.demo.password_hash: expected an argon2 hash",
        "feedd.yaml:12: connections.demo.quota: expected a size like 10MiB",
        "feedd.yaml:13: connections.Bad/Name: invalid connection name 'Bad/Name'",
        "feedd.yaml:16: pipelines.p1.connection: unknown connection 'dmeo' (did you mean 'demo'?)",
        "feedd.yaml:17: pipelines.p1.schema: unknown schema 'contacts' (did you mean 'contact'?)",
        "feedd.yaml:18: pipelines.p1.direction: expected one of inbound, outbound, got 'sideways'",
        "feedd.yaml:21: pipelines.p1.destinations[0].type: unknown destination type 'webhok' (did you mean 'webhook'?)",
        "feedd.yaml:22: pipelines.p1.destinations[1]: a s3 destination needs 'bucket'",
        "feedd.yaml:24: webhooks[0].events: 'run.finished' matches no event type",
        "feedd.yaml:24: webhooks[0].url: expected an http:// or https:// URL",
        "feedd.yaml:25: colour: unknown key",
    ]
    for fragment in expected:
        assert fragment in text, f"missing {fragment!r} in:\n{text}"


def test_unknown_keys_are_errors_with_nearest_valid_key(tmp_path: Path) -> None:
    found = errors(tmp_path, MINIMAL.replace("    match:", "    mach: [x]\n    match:") + "statedir: x\n")
    assert any("pipelines.demo-contacts.mach: unknown key (did you mean 'match'?)" in e for e in found)
    assert any(": statedir: unknown key (did you mean 'state_dir'?)" in e for e in found)


def test_mapping_targets_must_exist_in_the_schema(tmp_path: Path) -> None:
    found = errors(tmp_path, MINIMAL + "    mappings:\n      emial: Email\n")
    assert found == [f"feedd.yaml:{MINIMAL.count(chr(10)) + 2}: pipelines.demo-contacts.mappings.emial: "
                     "no field 'emial' in schema 'contact' (did you mean 'email'?)"]


@pytest.mark.parametrize(("template", "message"), [
    ("{First Name} {Last Name", "unclosed '{'"),
    ("{First Name}} x", "unmatched '}'"),
    ("{} x", "empty placeholder"),
    ("just text", "has no {column} placeholder"),
])
def test_template_placeholders_must_be_well_formed(tmp_path: Path, template: str, message: str) -> None:
    found = errors(tmp_path, MINIMAL + f'    mappings:\n      email: {{template: "{template}"}}\n')
    assert len(found) == 1 and "mappings.email.template" in found[0] and message in found[0]


def test_template_with_escaped_braces_is_fine(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL + '    mappings:\n      email: {template: "{{literal}} {User}@x.org"}\n')
    assert cfg.pipelines["demo-contacts"].mappings[0].template == "{{literal}} {User}@x.org"


def test_direction_must_agree_with_match(tmp_path: Path) -> None:
    found = errors(tmp_path, MINIMAL + """\
  out:
    connection: demo
    schema: contact
    direction: outbound
    match: ["inbox/*.csv"]
  in-without-match:
    connection: demo
    schema: contact
""")
    assert any("pipelines.out.match: an outbound pipeline takes no 'match'" in e for e in found)
    assert any("pipelines.in-without-match: an inbound pipeline needs 'match'" in e for e in found)


def test_outbound_pipeline_defaults_to_the_outbox(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL + "  out:\n    connection: demo\n    schema: contact\n    direction: outbound\n")
    out = cfg.pipelines["out"]
    assert [d.type for d in out.destinations] == [DestinationType.OUTBOX]
    assert out.reports is False


def test_destination_required_keys_and_sftp_credentials(tmp_path: Path) -> None:
    found = errors(tmp_path, MINIMAL + """\
    destinations:
      - {type: directory}
      - {type: webhook}
      - {type: sftp, host: h, username: u, path: /in}
      - {type: outbox, path: /x}
""")
    text = "\n".join(found)
    assert "destinations[0]: a directory destination needs 'path'" in text
    assert "destinations[1]: a webhook destination needs 'url'" in text
    assert "destinations[2]: an sftp destination needs 'key_file' or 'password'" in text
    assert "destinations[3].path: unknown key" in text


def test_env_interpolation_with_defaults_and_missing_vars(tmp_path: Path) -> None:
    text = MINIMAL.replace("state_dir: ./var", "state_dir: ${STATE:-./fallback}") + """\
    destinations:
      - {type: webhook, url: "http://${HOOK_HOST}:9000/in", secret: "${HOOK_SECRET}"}
"""
    cfg = load(tmp_path, text, env={"HOOK_HOST": "127.0.0.1", "HOOK_SECRET": "s3cret"})
    assert cfg.state_dir == tmp_path / "fallback"
    hook = cfg.pipelines["demo-contacts"].destinations[0]
    assert hook.url == "http://127.0.0.1:9000/in" and hook.secret == "s3cret"
    cfg = load(tmp_path, text, env={"HOOK_HOST": "h", "HOOK_SECRET": "s", "STATE": "/srv/feedd"})
    assert cfg.state_dir == Path("/srv/feedd")
    found = errors(tmp_path, text, env={"HOOK_HOST": "127.0.0.1"})
    assert len(found) == 1
    assert "destinations[0].secret: environment variable 'HOOK_SECRET' is not set" in found[0]


def test_env_interpolation_in_numbers_and_literal_dollar(tmp_path: Path) -> None:
    text = MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}',
                           'sftp: {listen: "127.0.0.1:${SFTP_PORT}", max_sessions_per_connection: "${MAX:-3}"}')
    text += '    mappings:\n      email: {value: "$${NOT_A_VAR}"}\n'
    cfg = load(tmp_path, text, env={"SFTP_PORT": "2022"})
    assert cfg.sftp.listen == (Address("127.0.0.1", 2022),)
    assert cfg.sftp.max_sessions_per_connection == 3


@pytest.mark.parametrize(("written", "expected"), [
    ("1024", 1024), ("10MiB", 10 * 1024**2), ("1GB", 10**9), ("1.5KiB", 1536), ("2 gib", 2 * 1024**3),
])
def test_sizes(tmp_path: Path, written: str, expected: int) -> None:
    cfg = load(tmp_path, MINIMAL.replace("    password_hash:", f"    quota: {written}\n    password_hash:"))
    assert cfg.connections["demo"].quota == expected


@pytest.mark.parametrize(("written", "expected"), [
    ("45", 45.0), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1.5s", 1.5),
])
def test_durations(tmp_path: Path, written: str, expected: float) -> None:
    cfg = load(tmp_path, MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}',
                                         f'sftp: {{listen: "127.0.0.1:0", settle: {written}}}'))
    assert cfg.sftp.settle == expected


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    cfg = load(tmp_path / "etc", MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}',
                                                 'sftp: {listen: "127.0.0.1:0", spaces_dir: ../spaces}'))
    assert cfg.state_dir == tmp_path / "etc" / "var"
    assert cfg.sftp.spaces_dir == tmp_path / "spaces"


def test_listen_accepts_lists_and_ipv6(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL.replace('http: {listen: "127.0.0.1:0"}',
                                         'http: {listen: ["127.0.0.1:8080", "[::1]:8081"]}'))
    assert cfg.http.listen == (Address("127.0.0.1", 8080), Address("::1", 8081))
    assert str(cfg.http.listen[1]) == "[::1]:8081"


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    found = errors(tmp_path, "state_dir: ./var\nsftp: {listen: [\n")
    assert len(found) == 1 and found[0].startswith("feedd.yaml:") and "YAML syntax error" in found[0]


def test_duplicate_key_in_one_file_is_an_error(tmp_path: Path) -> None:
    found = errors(tmp_path, MINIMAL + "state_dir: ./other\n")
    assert any("state_dir: duplicate key (first set on line 1)" in e for e in found)


def test_yes_and_no_stay_strings(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL + """\
    mappings:
      email: {from: Mail, transforms: [{boolean: {true: [yes, y, on], false: [no, n, off]}}, {map: {no: NO}}]}
""")
    transforms = cfg.pipelines["demo-contacts"].mappings[0].transforms
    assert transforms[0].arg == (("yes", "y", "on"), ("no", "n", "off"))
    assert transforms[1].arg == {"no": "NO"}


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", env={})
    assert "file not found" in str(info.value)


def test_console_operators_and_their_errors(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    assert cfg.http.console and cfg.http.operators == () and cfg.http.session_ttl == 12 * 3600
    http = (f'http:\n  listen: "127.0.0.1:0"\n  console: false\n  session_ttl: 30m\n  operators:\n'
            f'    - {{name: ann, password_hash: "{DEMO_HASH}", role: admin}}\n'
            f'    - {{name: bob, password_hash: "{DEMO_HASH}"}}\n')
    cfg = load(tmp_path, MINIMAL.replace('http: {listen: "127.0.0.1:0"}\n', http))
    assert not cfg.http.console and cfg.http.session_ttl == 1800
    assert [(o.name, str(o.role), o.admin) for o in cfg.http.operators] == [("ann", "admin", True),
                                                                           ("bob", "viewer", False)]
    bad = (f'http:\n  listen: "127.0.0.1:0"\n  operators:\n'
           f'    - {{name: ann, password_hash: "{DEMO_HASH}", role: boss}}\n'
           f'    - {{name: ann, password_hash: "secret"}}\n'
           f'    - {{password_hash: "{DEMO_HASH}"}}\n')
    found = errors(tmp_path, MINIMAL.replace('http: {listen: "127.0.0.1:0"}\n', bad))
    assert any("http.operators[0].role" in e and "boss" in e for e in found), found
    assert any("http.operators[1].password_hash" in e for e in found), found
    assert any("http.operators[1].name" in e and "defined twice" in e for e in found), found
    assert any("http.operators[2]" in e and "name" in e for e in found), found


def test_the_example_config_has_a_demo_operator() -> None:
    cfg = load_config(REPO / "feedd.example.yaml", env={})
    [admin] = cfg.http.operators
    assert admin.name == "admin" and admin.admin
    assert verify_password(admin.password_hash, "console-demo-change-me")  # the password the README states


def test_proxy_protocol_is_off_unless_turned_on_per_listener(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    assert cfg.sftp.proxy_protocol is False and cfg.http.proxy_protocol is False
    text = MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}', 'sftp: {listen: "127.0.0.1:0", proxy_protocol: true}')
    cfg = load(tmp_path, text)
    assert cfg.sftp.proxy_protocol is True and cfg.http.proxy_protocol is False
    text = MINIMAL.replace('http: {listen: "127.0.0.1:0"}', 'http: {listen: "127.0.0.1:0", proxy_protocol: 1}')
    assert any("proxy_protocol" in e for e in errors(tmp_path, text))
