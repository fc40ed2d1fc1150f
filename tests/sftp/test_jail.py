"""A partner never gets out of its space: paths, links planted or attempted, other spaces, read-only areas."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh
import pytest

from tests.sftp.conftest import Feedd
from tests.sftp.logs import capture_logs, wait_for, wait_scans

SECRET = b"host secret\n"


def plant_secrets(feedd: Feedd) -> list[Path]:
    """Files just outside the space, where an escape would land."""
    spaces = feedd.space().parent
    paths = [spaces / "secret.txt", feedd.root / "secret.txt", feedd.space("acme") / "inbox" / "secret.txt"]
    for p in paths:
        p.write_bytes(SECRET)
    return paths


def files_outside_space(feedd: Feedd) -> set[Path]:
    space = feedd.space()
    return {p for p in feedd.root.rglob("*") if p.is_file() and space not in p.parents}


@pytest.mark.parametrize("path", [
    "../secret.txt", "/../secret.txt", "/inbox/../../secret.txt", "../../secret.txt", "/../../../secret.txt",
    "..%2fsecret.txt", "\\..\\secret.txt", "/../acme/inbox/secret.txt", "inbox/../../acme/inbox/secret.txt",
])
async def test_dot_dot_and_encoded_paths_cannot_read_outside(feedd: Feedd, path: str) -> None:
    plant_secrets(feedd)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        with pytest.raises((asyncssh.SFTPNoSuchFile, asyncssh.SFTPPermissionDenied)):
            async with sftp.open(path, "rb") as f:
                await f.read()


async def test_absolute_host_paths_stay_inside(feedd: Feedd) -> None:
    secrets = plant_secrets(feedd)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        for secret in secrets:
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.stat(str(secret))
        # an absolute host path written by a client is a path inside the jail, at its top: refused
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            async with sftp.open(str(feedd.root / "escape.txt"), "wb") as f:
                await f.write(b"x")
    assert not (feedd.root / "escape.txt").exists()


@pytest.mark.parametrize("path", ["../escape.csv", "/inbox/../../escape.csv", "/inbox/d/../../../escape.csv",
                                  "/../acme/inbox/escape.csv"])
async def test_writes_never_land_outside(feedd: Feedd, path: str) -> None:
    before = files_outside_space(feedd)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.mkdir("/inbox/d")
        with pytest.raises((asyncssh.SFTPPermissionDenied, asyncssh.SFTPNoSuchFile)):
            async with sftp.open(path, "wb") as f:
                await f.write(b"email\nx@y.z\n")
    assert files_outside_space(feedd) - before == set()


async def test_dot_dot_after_a_real_folder_is_clamped_at_the_top(feedd: Feedd) -> None:
    plant_secrets(feedd)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.mkdir("/inbox/d1")
        await sftp.mkdir("/inbox/d1/d2")
        assert await sftp.realpath("/inbox/d1/d2/../../../../..") == "/"
        assert sorted(await sftp.listdir("/inbox/d1/d2/../../../..")) == [".", "..", "inbox", "outbox"]
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.stat("/inbox/d1/d2/../../../../secret.txt")


async def test_creating_links_is_refused_including_the_two_step_swap(feedd: Feedd) -> None:
    plant_secrets(feedd)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.mkdir("/inbox/d1")
        await sftp.mkdir("/inbox/d1/d2")
        # step 1 of the swap: a relative link that is harmless while d1/d2 is a real folder
        with pytest.raises(asyncssh.SFTPOpUnsupported):
            await sftp.symlink("d1/d2/../..", "/inbox/s")
        with pytest.raises(asyncssh.SFTPOpUnsupported):
            await sftp.symlink("/inbox/d1", "/inbox/abs")
        async with sftp.open("/inbox/d1/f.txt", "wb") as f:
            await f.write(b"x")
        with pytest.raises(asyncssh.SFTPOpUnsupported):
            await sftp.link("/inbox/d1/f.txt", "/inbox/hard.txt")
    inbox = feedd.space() / "inbox"
    assert not os.path.lexists(inbox / "s") and not os.path.lexists(inbox / "abs")
    assert not os.path.lexists(inbox / "hard.txt")


async def test_links_planted_on_disk_are_not_followed_out(feedd: Feedd) -> None:
    secret, *_ = plant_secrets(feedd)
    inbox = feedd.space() / "inbox"
    os.symlink(secret, inbox / "evil.txt")
    os.symlink(feedd.root, inbox / "evil_dir")
    os.symlink("../../../secret.txt", inbox / "relative_evil.txt")
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        for name in ("evil.txt", "relative_evil.txt"):
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                async with sftp.open(f"/inbox/{name}", "rb") as f:
                    await f.read()
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                async with sftp.open(f"/inbox/{name}", "wb") as f:
                    await f.write(b"overwritten")
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.chmod(f"/inbox/{name}", 0o777)
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.stat(f"/inbox/{name}")
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.listdir("/inbox/evil_dir")
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.stat("/inbox/evil_dir/secret.txt")
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.readlink("/inbox/evil.txt")
    assert secret.read_bytes() == SECRET
    assert (secret.stat().st_mode & 0o777) != 0o777


async def test_links_inside_the_space_still_work(feedd: Feedd) -> None:
    space = feedd.space()
    (space / "outbox" / "report.json").write_text('{"ok": true}')
    os.symlink("../outbox/report.json", space / "inbox" / "report-link.json")
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/report-link.json", "rb") as f:
            assert await f.read() == b'{"ok": true}'
        assert await sftp.readlink("/inbox/report-link.json") == "/outbox/report.json"
        # writing through an in-space link into the read-only outbox is still refused
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            async with sftp.open("/inbox/report-link.json", "wb") as f:
                await f.write(b"x")


async def test_a_planted_hardlink_is_never_taken(feedd: Feedd) -> None:
    """A hard link's bytes are also another name's, maybe outside the space: not the partner's to give."""
    outside = feedd.root / "outside.csv"
    outside.write_bytes(b"email\nhard@link.test\n")
    os.link(outside, feedd.space() / "inbox" / "hard.csv")
    with capture_logs() as logs:
        await wait_for(lambda: any(e["event"] == "drop.refused" for e in logs))
        await wait_scans(logs, 2)
    assert await feedd.runs() == []
    assert [e["file"] for e in logs if e["event"] == "drop.refused"] == ["inbox/hard.csv"]  # once
    assert outside.read_bytes() == b"email\nhard@link.test\n"
    assert (feedd.space() / "inbox" / "hard.csv").exists()


async def test_sibling_space_with_a_common_prefix_is_unreachable(feedd: Feedd) -> None:
    (feedd.space("acme2") / "outbox" / "private.txt").write_text("acme2 only")
    async with await feedd.connect("acme") as conn, conn.start_sftp_client() as sftp:
        for path in ("/../acme2/outbox/private.txt", "../acme2/outbox/private.txt", "/outbox/../../acme2/outbox"):
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.stat(path)


async def test_top_level_and_outbox_are_read_only(feedd: Feedd) -> None:
    space = feedd.space()
    (space / "outbox" / "result.csv").write_text("done\n")
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        assert sorted(await sftp.listdir("/")) == [".", "..", "inbox", "outbox"]
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="only inbox/ and outbox/"):
            async with sftp.open("/top.csv", "wb") as f:
                await f.write(b"x")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.mkdir("/newdir")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.rmdir("/inbox")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.rename("/inbox", "/in")
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="outbox/ is read-only"):
            async with sftp.open("/outbox/mine.csv", "wb") as f:
                await f.write(b"x")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.mkdir("/outbox/sub")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.rename("/outbox/result.csv", "/outbox/renamed.csv")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.rename("/outbox/result.csv", "/inbox/stolen.csv")
        async with sftp.open("/outbox/result.csv", "rb") as f:
            assert await f.read() == b"done\n"
        await sftp.remove("/outbox/result.csv")
    assert not (space / "outbox" / "result.csv").exists()
    assert sorted(p.name for p in space.iterdir()) == ["inbox", "outbox"]


@pytest.mark.parametrize(("name", "why"), [
    ("bad\x00name.csv", None),
    ("line\nbreak.csv", "control"),
    ("tab\there.csv", "control"),
    ("bidi\u202etxt.csv", "control"),
    ("x" * 256 + ".csv", "longer than 255 bytes"),
])
async def test_bad_names_are_refused_and_the_session_lives(feedd: Feedd, name: str, why: str | None) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        with pytest.raises(asyncssh.SFTPError) as info:
            async with sftp.open(f"/inbox/{name}", "wb") as f:
                await f.write(b"x")
        if why:
            assert why in str(info.value.reason)
        # the same session still works
        async with sftp.open("/inbox/fine.csv", "wb") as f:
            await f.write(b"email\nok@x.io\n")
    assert sorted(p.name for p in (feedd.space() / "inbox").iterdir()) in ([], ["fine.csv"])
    runs = await feedd.wait_runs(1)
    assert [r.source.name for r in runs] == ["inbox/fine.csv"]


async def test_invalid_utf8_name_is_refused(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client(path_encoding=None) as sftp:
        with pytest.raises(asyncssh.SFTPError, match="UTF-8"):
            async with sftp.open(b"/inbox/\xff\xfe.csv", "wb") as f:
                await f.write(b"x")
