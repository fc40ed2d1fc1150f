"""Who gets in: passwords, keys, disabled connections, allowed IPs, bans per source IP, other services refused."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import re
import time
from collections.abc import Callable

import asyncssh
import pytest

import feedd.sftp.auth as auth
from feedd import log
from feedd.credentials import hash_password
from tests.helpers import DEMO_HASH, DEMO_PASSWORD, REPO
from tests.sftp.conftest import Feedd


@pytest.fixture(autouse=True)
def fast_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "FAILURE_DELAY", 0.05)


async def test_password_login_works_and_a_wrong_one_fails(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        assert "inbox" in await sftp.listdir("/")
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect(password="wrong")


async def test_unknown_user_fails_like_a_wrong_password(feedd: Feedd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "FAILURE_DELAY", 0)
    # A failed login also waits for its failure to be written to the store, whose time varies with the
    # disk: the fastest of three tries of each, each from an address of its own (no ban gets in the way).
    timings: dict[str, float] = {}
    gc.disable()  # a collection of the test process's whole heap can take longer than a login
    try:
        for n, user in enumerate(("demo", "nobody-here", "demo", "nobody-here", "demo", "nobody-here")):
            started = time.monotonic()
            with pytest.raises(asyncssh.PermissionDenied):
                await feedd.connect(user, password="wrong", local_addr=(f"127.0.0.{20 + n}", 0))
            timings[user] = min(timings.get(user, 60.0), time.monotonic() - started)
    finally:
        gc.enable()
    # the unknown user pays for an argon2 verify too: no fast path that reveals which names exist
    assert timings["nobody-here"] > 0.5 * timings["demo"]


async def test_key_login_and_a_key_of_another_connection(feedd: Feedd) -> None:
    key = asyncssh.read_private_key(str(feedd.key_path))
    async with await feedd.connect(password=None, client_keys=[key]) as conn, conn.start_sftp_client() as sftp:
        assert "inbox" in await sftp.listdir("/")
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect("acme", password=None, client_keys=[key])
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect(password=None, client_keys=[stranger])


async def test_disabled_connection_is_refused_and_reload_enables_it(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(demo_extra="enabled: false")
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect()
    key = asyncssh.read_private_key(str(feedd.key_path))
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect(password=None, client_keys=[key])
    await feedd.reload(feedd.config_path.read_text().replace("enabled: false", "enabled: true"))
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        assert "inbox" in await sftp.listdir("/")


async def test_source_ip_not_allowed(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(demo_extra='allowed_ips: ["127.0.0.2/32"]')
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect()  # from 127.0.0.1
    async with await feedd.connect(local_addr=("127.0.0.2", 0)) as conn, conn.start_sftp_client() as sftp:
        assert "inbox" in await sftp.listdir("/")


async def test_ban_after_failures_then_unban(feedd: Feedd) -> None:
    bad_ip = ("127.0.0.3", 0)
    for _ in range(3):
        with pytest.raises(asyncssh.DisconnectError):  # the third failure also closes the connection
            await feedd.connect(password="wrong", local_addr=bad_ip)
    # banned: even the right password is refused, at once, from that IP only
    with pytest.raises((asyncssh.Error, OSError)):
        await feedd.connect(local_addr=bad_ip)
    async with await feedd.connect(local_addr=("127.0.0.4", 0)):
        pass
    await asyncio.sleep(2.2)  # `ban.for` is 2s in the test config
    async with await feedd.connect(local_addr=bad_ip):
        pass


async def test_too_many_attempts_on_one_connection_disconnects(feedd: Feedd) -> None:
    attempts = 0

    class Client(asyncssh.SSHClient):
        def password_auth_requested(self) -> str:
            nonlocal attempts
            attempts += 1
            return "wrong"

    # a wide ban window so the ban does not cut this short: only the per-connection cap ends it
    assert feedd.daemon.sftp is not None
    feedd.daemon.sftp._auth.bans.policy = feedd.daemon.config.sftp.ban.__class__(100, 60, 2)
    with pytest.raises((asyncssh.Error, OSError)):
        await feedd.connect(password=None, client_factory=Client, local_addr=("127.0.0.5", 0))
    assert attempts <= auth.MAX_AUTH_TRIES


async def test_overlong_password_is_refused_without_hashing(feedd: Feedd, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []
    real = auth.verify_password

    def counting(phc: str, password: str) -> bool:
        hashed.append(len(password))
        return real(phc, password)

    monkeypatch.setattr(auth, "verify_password", counting)
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect(password="x" * 30_000, local_addr=("127.0.0.6", 0))
    assert hashed == []
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect(password="y" * 1024, local_addr=("127.0.0.6", 0))
    assert hashed == [1024], "up to 1 KiB is verified as usual"


async def test_exec_shell_forwarding_and_scp_are_refused(feedd: Feedd) -> None:
    async with await feedd.connect() as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.run("id", check=True)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process()
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", feedd.port)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
        with pytest.raises((asyncssh.Error, OSError)):
            await asyncssh.scp((conn, "/inbox/x.csv"), str(feedd.root / "x.csv"))
        # the connection survives all of that and still serves SFTP
        async with conn.start_sftp_client() as sftp:
            assert "inbox" in await sftp.listdir("/")


async def test_no_sha1_signatures_and_strict_kex(feedd: Feedd) -> None:
    with pytest.raises((asyncssh.Error, OSError)):
        await feedd.connect(server_host_key_algs=["ssh-rsa"], signature_algs=["ssh-rsa"])
    async with await feedd.connect() as conn:
        assert conn.get_extra_info("server_version") == "SSH-2.0-feedd"
        assert conn._strict_kex, "strict key exchange negotiated (Terrapin countermeasure)"


async def test_password_reload_keeps_live_sessions(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        text = feedd.config_path.read_text()
        await feedd.reload(text.replace(DEMO_HASH, hash_password("a-new-password"), 1))
        assert "inbox" in await sftp.listdir("/"), "the open session keeps working"
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect(password=DEMO_PASSWORD)
    async with await feedd.connect(password="a-new-password"):
        pass


@pytest.mark.parametrize(("change", "reason"), [
    (lambda text: text.replace("  demo:\n", "  demo:\n    enabled: false\n", 1), "connection disabled"),
    (lambda text: re.sub(r"  demo:\n(    .*\n)+", "", text).replace("connection: demo", "connection: acme"),
     "connection removed"),
], ids=["disabled", "removed"])
async def test_a_reload_that_disables_a_connection_ends_its_live_sessions(
        feedd: Feedd, change: Callable[[str], str], reason: str) -> None:
    out = io.StringIO()
    log.configure("info", "json", stream=out)
    conn = await feedd.connect()
    sftp = await conn.start_sftp_client()
    assert "inbox" in await sftp.listdir("/")
    async with await feedd.connect("acme") as other, other.start_sftp_client() as other_sftp:
        await feedd.reload(change(feedd.config_path.read_text()))
        await asyncio.wait_for(conn.wait_closed(), 10)  # the server hung up on demo's connection
        with pytest.raises((asyncssh.Error, OSError)):
            await sftp.listdir("/")
        assert "inbox" in await other_sftp.listdir("/"), "other connections keep their sessions"
    with pytest.raises(asyncssh.PermissionDenied):
        await feedd.connect()
    ended = [json.loads(line) for line in out.getvalue().splitlines() if "sftp.sessions_ended" in line]
    assert [(e["connection"], e["count"], e["reason"]) for e in ended] == [("demo", 1, reason)]


def test_usernames_are_escaped_for_logs() -> None:
    assert auth.escaped("x\nfrom 10.9.9.9") == "x\\nfrom 10.9.9.9"
    assert "\n" not in auth.escaped("a\r\nb\x00")


async def test_failures_are_logged_for_fail2ban_with_the_real_source(feedd: Feedd) -> None:
    out = io.StringIO()
    log.configure("info", "json", stream=out)
    for user in ("x from 10.9.9.9", "x' from 10.9.9.8 for user 'y"):
        with pytest.raises(asyncssh.PermissionDenied):
            await feedd.connect(user, password="wrong", local_addr=("127.0.0.7", 0))
    filter_text = (REPO / "systemd" / "fail2ban-feedd.conf").read_text()
    failregex = re.search(r"^failregex = (.*)$", filter_text, re.M).group(1)  # type: ignore[union-attr]
    pattern = re.compile(failregex.replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)"))
    hosts = [m.group("host") for line in out.getvalue().splitlines() if (m := pattern.search(line))]
    assert hosts == ["127.0.0.7", "127.0.0.7"]
    assert all("\n" not in line[:-1] for line in out.getvalue().splitlines(keepends=True))
