"""OpenPGP per connection, end to end: a partner uploads files encrypted to feedd's key over SFTP and reads
back reports and outputs encrypted to its own key. Keys are made by gpg for the test session."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from feedd import pgp
from feedd.config import load_config
from feedd.config.managed import REDACTED, shown
from feedd.daemon import Daemon
from feedd.errors import ConfigError
from feedd.model import Run, RunStatus
from feedd.tryrun import try_file
from tests.helpers import DEMO_HASH, write
from tests.pipeline.test_runner import finished, upload
from tests.sftp.conftest import Feedd, fetch_outbox

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="GnuPG's gpg not installed (apt-get install gnupg)")

PASSPHRASE = "correct horse battery staple"
CSV = b"email,name\nann@example.org,Ann\nnot-an-email,Bob\ncid@example.org,Cid\n"


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", *args],
                          input=data, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def make_key(folder: Path, name: str, passphrase: str = "") -> Path:
    """A new ed25519/cv25519 key in a GnuPG home of its own; its secret (`<name>.sec.asc`) and public
    (`<name>.pub.asc`) halves exported beside it. Returns the home."""
    home = folder / name
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", passphrase, "--quick-gen-key", f"{name} <{name}@example.org>", "future-default",
        "default", "never")
    (folder / f"{name}.pub.asc").write_bytes(gpg(home, "--armor", "--export"))
    (folder / f"{name}.sec.asc").write_bytes(gpg(home, "--passphrase", passphrase, "--armor",
                                                 "--export-secret-keys"))
    return home


@dataclass(frozen=True)
class Keys:
    folder: Path
    partner: Path  # the partner's home: its own secret key, and feedd's and a stranger's public keys

    def encrypt(self, data: bytes, to: str = "feedd", armor: bool = False) -> bytes:
        return gpg(self.partner, "--trust-model", "always", "--encrypt", "--recipient", f"{to}@example.org",
                   *(["--armor"] if armor else []), "--output", "-", data=data)

    def decrypt(self, data: bytes) -> bytes:
        return gpg(self.partner, "--decrypt", "--output", "-", data=data)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    folder = tmp_path_factory.mktemp("pgp")
    homes = [make_key(folder, "feedd", PASSPHRASE), make_key(folder, "stranger"), make_key(folder, "partner")]
    for other in ("feedd", "stranger"):
        gpg(homes[2], "--import", str(folder / f"{other}.pub.asc"))
    # one file holding two public keys, the partner's second: outbox files are encrypted to both
    (folder / "both.pub.asc").write_bytes((folder / "stranger.pub.asc").read_bytes()
                                          + (folder / "partner.pub.asc").read_bytes())
    yield Keys(folder, homes[2])
    for home in homes:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False)


def config_text(keys: Keys, host_key: Path, demo_pgp: str | None = None, demo_extra: str = "") -> str:
    k = keys.folder
    demo_pgp = demo_pgp or (f'{{decrypt_key: "{k}/feedd.sec.asc", passphrase: "${{FEEDD_PGP_PASSPHRASE}}", '
                            f'encrypt_to: ["{k}/both.pub.asc"]}}')
    return f"""\
state_dir: ./var
log: {{level: debug, format: json}}
sftp: {{listen: "127.0.0.1:0", host_keys: ["{host_key}"], settle: 300ms, scan_interval: 1s}}
http: {{listen: "127.0.0.1:0"}}
schemas:
  contact:
    fields:
      email: {{type: email, required: true}}
      name: {{type: string}}
connections:
  demo:
    password_hash: "{DEMO_HASH}"
    pgp: {demo_pgp}
  acme:
    password_hash: "{DEMO_HASH}"
    pgp: {{decrypt_key: "{k}/feedd.sec.asc", passphrase: "not the passphrase"}}
  acme2:
    password_hash: "{DEMO_HASH}"
    pgp: {{decrypt_key: "{k}/feedd.sec.asc"}}
pipelines:
  demo-contacts:
    connection: demo
    schema: contact
    match: ["inbox/*.pgp", "inbox/*.gpg", "inbox/*.asc"]
    destinations: [{{type: outbox}}]
    {demo_extra}
  acme-contacts: {{connection: acme, schema: contact, match: ["inbox/*"]}}
  acme2-contacts: {{connection: acme2, schema: contact, match: ["inbox/*"]}}
"""


@pytest.fixture
async def pgp_feedd(tmp_path: Path, keys: Keys, host_key: Path) -> AsyncIterator[Feedd]:
    path = write(tmp_path, "feedd.yaml", config_text(keys, host_key))
    daemon = Daemon(load_config(path, env={"FEEDD_PGP_PASSPHRASE": PASSPHRASE}), drain_seconds=2, workers=1)
    await daemon.start()
    try:
        yield Feedd(daemon, tmp_path, Path(), path)
    finally:
        await daemon.stop()


async def outbox(feedd: Feedd, *names: str, within: float = 20.0) -> dict[str, bytes]:
    """The partner's outbox as read over SFTP, once it holds every one of `names`."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        files = await asyncio.to_thread(fetch_outbox, feedd.port)
        if all(n in files for n in names):
            return files
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not in the outbox: {sorted(set(names) - set(files))}; there: {sorted(files)}")
        await asyncio.sleep(0.1)


def one(runs: list[Run], name: str) -> Run:
    [run] = [r for r in runs if r.source.name == name]
    return run


async def test_an_encrypted_csv_is_read_and_everything_written_back_is_encrypted(pgp_feedd: Feedd,
                                                                                    keys: Keys) -> None:
    feedd = pgp_feedd
    sent = keys.encrypt(CSV)
    armored = keys.encrypt(b"email\ndee@example.org\n", armor=True)
    await upload(feedd, "/inbox/staff.csv.pgp", sent)
    await upload(feedd, "/inbox/more.csv.asc", armored)
    runs = await finished(feedd, 2, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    run, more = one(runs, "inbox/staff.csv.pgp"), one(runs, "inbox/more.csv.asc")
    assert run.status is RunStatus.DELIVERED, run.error
    assert (run.counts.rows, run.counts.valid, run.counts.invalid) == (3, 2, 1)
    assert run.meta["detected"]["format"] == "csv"  # from the name without .pgp
    assert more.status is RunStatus.DELIVERED and more.counts.valid == 1, more.error
    # The spool keeps the encrypted original, and the run's sha256 is its own; no plain copy stays behind.
    assert Path(run.spool_path).read_bytes() == sent
    assert run.source.sha256 == hashlib.sha256(sent).hexdigest() != hashlib.sha256(CSV).hexdigest()
    for r in runs:
        assert not (feedd.daemon.config.state_dir / "runs" / r.run_id / "input").exists()

    output = f"{run.meta['output_name']}.pgp"
    files = await outbox(feedd, "staff.csv.pgp.report.json.pgp", "staff.csv.pgp.rejects.csv.pgp", output,
                         "more.csv.asc.report.json.pgp", "demo-contacts.spec.md.pgp")
    assert all(name.endswith(".pgp") for name in files), sorted(files)  # nothing in the clear
    report = json.loads(keys.decrypt(files["staff.csv.pgp.report.json.pgp"]))
    assert report["status"] == "completed" and report["sha256"] == run.source.sha256
    assert report["counts"] == {"rows": 3, "valid": 2, "invalid": 1, "warned": 0}
    rejects = keys.decrypt(files["staff.csv.pgp.rejects.csv.pgp"]).decode()
    assert "not-an-email" in rejects and "ann@example.org" not in rejects
    records = [json.loads(line) for line in keys.decrypt(files[output]).splitlines()]
    assert records == [{"email": "ann@example.org", "name": "Ann"}, {"email": "cid@example.org", "name": "Cid"}]
    assert b"| email |" in keys.decrypt(files["demo-contacts.spec.md.pgp"])


async def test_a_file_that_does_not_decrypt_fails_with_decrypt_failed(pgp_feedd: Feedd, keys: Keys) -> None:
    feedd = pgp_feedd
    stranger = keys.encrypt(CSV, to="stranger")
    good = bytearray(keys.encrypt(CSV))
    good[len(good) // 2:] = bytes(b ^ 0x5A for b in good[len(good) // 2:])  # damaged after its header
    await upload(feedd, "/inbox/stranger.csv.pgp", stranger)
    await upload(feedd, "/inbox/damaged.csv.gpg", bytes(good))
    await upload(feedd, "/inbox/plain.csv.pgp", CSV)  # not OpenPGP at all
    await upload(feedd, "/inbox/notes.txt", b"no pipeline takes this\n")  # intake's own report is sealed too
    runs = await finished(feedd, 4)
    for name, said in (("inbox/stranger.csv.pgp", "No secret key"), ("inbox/damaged.csv.gpg", "gpg: "),
                       ("inbox/plain.csv.pgp", "no valid OpenPGP data")):
        run = one(runs, name)
        assert run.status is RunStatus.FAILED and run.error is not None, name
        assert run.error.code == "decrypt_failed", (name, run.error)
        assert run.error.message.startswith(f"{name}: could not be decrypted") and said in run.error.message, \
            run.error.message
        assert Path(run.spool_path).is_file()  # nothing lost: retry once the key is right
    files = await outbox(feedd, "stranger.csv.pgp.report.json.pgp", "notes.txt.report.json.pgp")
    report = json.loads(keys.decrypt(files["stranger.csv.pgp.report.json.pgp"]))
    assert report["error"]["code"] == "decrypt_failed"
    assert json.loads(keys.decrypt(files["notes.txt.report.json.pgp"]))["error"]["code"] == "no_matching_pipeline"
    assert "notes.txt.report.json" not in files


async def test_a_wrong_or_missing_passphrase_fails_with_decrypt_failed(pgp_feedd: Feedd, keys: Keys) -> None:
    feedd = pgp_feedd
    sent = keys.encrypt(CSV)
    for user in ("acme", "acme2"):  # a wrong passphrase, and none at all for a protected key
        async with await feedd.connect(username=user) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/inbox/staff.csv.pgp", "wb") as f:
                await f.write(sent)
    runs = await finished(feedd, 2)
    for run in runs:
        assert run.status is RunStatus.FAILED and run.error is not None
        assert run.error.code == "decrypt_failed", run.error
    said = {r.connection: r.error.message for r in runs if r.error}
    assert "Bad passphrase" in said["acme"], said
    assert "its key needs a passphrase and the connection has none" in said["acme2"], said


async def test_a_run_reads_the_key_file_as_it_is_now(tmp_path: Path, keys: Keys, host_key: Path) -> None:
    """A replaced decrypt_key takes the old one's place: the old key no longer decrypts anything."""
    key_file = tmp_path / "current.sec.asc"
    shutil.copy(keys.folder / "feedd.sec.asc", key_file)
    text = config_text(keys, host_key, f'{{decrypt_key: "{key_file}", passphrase: "{PASSPHRASE}"}}')
    daemon = Daemon(load_config(write(tmp_path, "feedd.yaml", text), env={}), drain_seconds=2, workers=1)
    await daemon.start()
    feedd = Feedd(daemon, tmp_path, Path(), tmp_path / "feedd.yaml")
    try:
        await upload(feedd, "/inbox/first.csv.pgp", keys.encrypt(CSV))
        [first] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
        assert first.status is RunStatus.DELIVERED, first.error
        shutil.copy(keys.folder / "stranger.sec.asc", key_file)
        await upload(feedd, "/inbox/second.csv.pgp", keys.encrypt(CSV))
        await upload(feedd, "/inbox/third.csv.pgp", keys.encrypt(b"email\neve@example.org\n", to="stranger"))
        runs = await finished(feedd, 3, until=(RunStatus.DELIVERED, RunStatus.FAILED))
        second, third = one(runs, "inbox/second.csv.pgp"), one(runs, "inbox/third.csv.pgp")
        assert second.error is not None and second.error.code == "decrypt_failed", second.error
        assert third.status is RunStatus.DELIVERED, third.error
    finally:
        await daemon.stop()


async def test_a_reviewer_sees_an_encrypted_input_decrypted(tmp_path: Path, keys: Keys, host_key: Path) -> None:
    text = config_text(keys, host_key, demo_extra="review: [unmapped_required_field]")
    daemon = Daemon(load_config(write(tmp_path, "feedd.yaml", text), env={"FEEDD_PGP_PASSPHRASE": PASSPHRASE}),
                    drain_seconds=2, workers=1)
    await daemon.start()
    feedd = Feedd(daemon, tmp_path, Path(), tmp_path / "feedd.yaml")
    try:
        await upload(feedd, "/inbox/odd.csv.pgp", keys.encrypt(b"address,name\nann@example.org,Ann\n"))
        [run] = await finished(feedd, 1, until=(RunStatus.NEEDS_REVIEW, RunStatus.FAILED))
        assert run.status is RunStatus.NEEDS_REVIEW, run.error
        assert daemon.reviews is not None
        seen = await daemon.reviews.sample(run)
        assert (seen["headers"], seen["error"]) == (["address", "name"], None)
        assert seen["rows"] == [{"row": 2, "cells": ["ann@example.org", "Ann"]}]
        tried = await daemon.reviews.preview(run, {"email": "address"})
        assert tried["status"] == "completed" and tried["counts"]["valid"] == 1, tried
    finally:
        await daemon.stop()


def test_feedd_try_decrypts_as_a_run_would(tmp_path: Path, keys: Keys, host_key: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(write(tmp_path, "feedd.yaml", config_text(keys, host_key)),
                         env={"FEEDD_PGP_PASSPHRASE": PASSPHRASE})
    (tmp_path / "staff.csv.pgp").write_bytes(keys.encrypt(CSV))
    (tmp_path / "other.csv.pgp").write_bytes(keys.encrypt(CSV, to="stranger"))
    assert try_file(config, "demo-contacts", str(tmp_path / "staff.csv.pgp")) == 0
    said = capsys.readouterr().out
    assert "rows 3   valid 2   invalid 1" in said and "read as csv" in said, said
    assert try_file(config, "demo-contacts", str(tmp_path / "other.csv.pgp")) == 1
    assert "error: decrypt_failed: other.csv.pgp: could not be decrypted" in capsys.readouterr().out
    assert not (tmp_path / "var").exists()  # `try` writes nothing of feedd's


def test_a_decompression_bomb_is_stopped(tmp_path: Path, keys: Keys) -> None:
    """OpenPGP compresses: 64 MiB of zeros encrypt to a few KiB, and decryption stops past 200x that."""
    bomb = tmp_path / "zeros.csv.pgp"
    bomb.write_bytes(keys.encrypt(b"email\n" + bytes(64 * 1024**2)))
    assert bomb.stat().st_size < 1024**2
    k = keys.folder
    home = tmp_path / "home"
    plain = tmp_path / "plain" / "zeros.csv"
    to_feedd = pgp.Keys(str(home), (f"{k}/feedd.sec.asc",), passphrase=PASSPHRASE)
    try:
        with pytest.raises(pgp.PgpError) as caught:
            pgp.decrypt(to_feedd, str(bomb), str(plain))
        assert caught.value.code == "unreadable_input" and "decompression bomb" in caught.value.message
        assert not plain.exists()
        small = tmp_path / "small.csv.pgp"
        small.write_bytes(keys.encrypt(CSV))
        pgp.decrypt(to_feedd, str(small), str(plain))  # the same home goes on working
        assert plain.read_bytes() == CSV and plain.stat().st_mode & 0o077 == 0
    finally:
        pgp.stop_agent(home)


def test_key_files_are_checked_at_load(tmp_path: Path, keys: Keys, host_key: Path) -> None:
    k = keys.folder
    (tmp_path / "garbage.asc").write_text("not a key\n")
    bad = {
        f'{{decrypt_key: "{tmp_path}/missing.asc"}}': "connections.demo.pgp.decrypt_key: cannot read",
        f'{{decrypt_key: "{k}/partner.pub.asc"}}': "holds a public key only",
        f'{{encrypt_to: ["{k}/partner.pub.asc", "{tmp_path}/garbage.asc"]}}':
            "connections.demo.pgp.encrypt_to[1]: " + f"{tmp_path}/garbage.asc holds no OpenPGP key",
        f'{{encrypt_to: ["{tmp_path}/nope.asc"]}}': "connections.demo.pgp.encrypt_to[0]: cannot read",
        '{passphrase: "x"}': "a passphrase is for decrypt_key",
        f'{{decrypt_key: "{k}/feedd.sec.asc", passphrase: "${{UNSET_FOR_TEST}}"}}': "UNSET_FOR_TEST",
        f'{{decrypt_key: "{k}/feedd.sec.asc", encrypt_too: []}}': "unknown key",
    }
    for block, expected in bad.items():
        path = write(tmp_path, "feedd.yaml", config_text(keys, host_key, block))
        with pytest.raises(ConfigError) as caught:
            load_config(path, env={})
        problems = [str(i) for i in caught.value.issues]
        assert any(expected in p for p in problems), (block, problems)
        assert all(p.startswith("feedd.yaml:13: connections.demo.pgp") for p in problems if expected in p), problems
    ok = write(tmp_path, "feedd.yaml", config_text(keys, host_key))
    config = load_config(ok, env={"FEEDD_PGP_PASSPHRASE": PASSPHRASE})
    pgp_of_demo = config.connections["demo"].pgp
    assert pgp_of_demo is not None and pgp_of_demo.passphrase == PASSPHRASE
    assert PASSPHRASE not in repr(config)


def test_the_passphrase_is_a_secret_in_answers() -> None:
    body: dict[str, Any] = {"password_hash": DEMO_HASH, "pgp": {"decrypt_key": "/k.asc", "passphrase": "hunter2"}}
    assert shown("connections", body)["pgp"] == {"decrypt_key": "/k.asc", "passphrase": REDACTED}
    body["pgp"]["passphrase"] = "${PGP_PASS}"
    assert shown("connections", body)["pgp"]["passphrase"] == "${PGP_PASS}"
