"""`http.tls`: the side API over HTTPS, with a self-signed certificate the test makes for 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from feedd.client import Client, ClientError
from feedd.config import load_config
from feedd.daemon import Daemon
from feedd.errors import ConfigError, StartupError
from tests.helpers import DEMO_HASH, DEMO_PASSWORD, MINIMAL, run_cli, write
from tests.http.conftest import ADMIN_KEY, Api
from tests.http.test_uploads import orders


def make_cert(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key, as PEM files in `folder`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "feedd test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
async def tls_api(start_api: Callable[..., Any], tmp_path: Path) -> Api:
    make_cert(tmp_path)
    # relative paths: relative to the config file's folder, like every other path
    api: Api = await start_api(http_extra="tls: {cert: server.crt, key: server.key}")
    api.url = api.url.replace("http://", "https://")
    return api


async def test_healthz_over_https_with_the_ca_and_not_without(tls_api: Api, tmp_path: Path) -> None:
    trusted = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))
    async with aiohttp.ClientSession() as session:
        async with session.get(tls_api.url + "/healthz", ssl=trusted) as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
        async with session.get(tls_api.url + "/runs", ssl=trusted,
                               headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # an unknown CA is refused
            await session.get(tls_api.url + "/healthz")


async def test_the_handshake_is_tls_1_2_or_later(tls_api: Api, tmp_path: Path) -> None:
    port = int(tls_api.url.rsplit(":", 1)[1])
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ssl.create_default_context(cafile=str(tmp_path / "server.crt")))
    assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    writer.close()
    # a client's OpenSSL may itself refuse TLS 1.0/1.1, so the floor is read from the server's context
    assert tls_api.daemon.http is not None
    server_ssl = tls_api.daemon.http._ssl
    assert server_ssl is not None and server_ssl.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_plain_http_to_the_tls_port_gets_no_answer(tls_api: Api) -> None:
    plain = tls_api.url.replace("https://", "http://")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain + "/healthz") as resp:
                await resp.read()


async def test_client_and_cli_take_https_with_cacert_or_ssl_cert_file(tls_api: Api, tmp_path: Path) -> None:
    ca = str(tmp_path / "server.crt")
    client = Client(tls_api.url, ADMIN_KEY, cafile=ca)
    done = await asyncio.to_thread(client.upload_json, "demo", "demo-orders-out", orders(0, 3))
    run = await asyncio.to_thread(client.wait_for_run, done["runId"], 30, 0.05)
    assert run["status"] == "delivered"
    with pytest.raises(ClientError) as info:  # without the CA: a clear refusal, not a traceback
        await asyncio.to_thread(Client(tls_api.url, ADMIN_KEY).runs)
    assert info.value.code == "unreachable" and "CERTIFICATE_VERIFY_FAILED" in info.value.message

    data = tmp_path / "more.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in orders(10, 2)))
    base = {**os.environ, "FEEDD_API_KEY": ADMIN_KEY, "FEEDD_URL": tls_api.url}
    code, out, err = await _cli("push", "--connection", "demo", "--pipeline", "demo-orders-out", "--cacert", ca,
                                str(data), env=base)
    assert code == 0, err
    assert "completed: 2 records" in out
    code, out, err = await _cli("runs", "list", env={**base, "SSL_CERT_FILE": ca})
    assert code == 0, err
    assert run["runId"] in out
    code, out, err = await _cli("runs", "show", run["runId"], env=base)  # no CA at all
    assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err and "Traceback" not in err
    code, out, err = await _cli("runs", "list", "--cacert", str(tmp_path / "missing.pem"), env=base)
    assert code == 2 and "missing.pem" in err and "Traceback" not in err


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "feedd", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_a_missing_or_unreadable_cert_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    make_cert(tmp_path)
    config = write(tmp_path, "feedd.yaml", MINIMAL.replace(
        'http: {listen: "127.0.0.1:0"}', 'http: {listen: "127.0.0.1:0", tls: {cert: nope.crt, key: server.key}}'))
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    assert "http.tls.cert" in str(info.value) and str(tmp_path / "nope.crt") in str(info.value)
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 1 and "nope.crt" in result.stderr
    (tmp_path / "feedd.yaml").write_text(MINIMAL.replace('http: {listen: "127.0.0.1:0"}',
                                                         'http: {listen: "127.0.0.1:0", tls: {cert: server.crt}}'))
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    assert "missing required key 'key'" in str(info.value)


async def test_a_key_that_is_not_the_certs_stops_the_start_naming_the_files(tmp_path: Path) -> None:
    make_cert(tmp_path)
    make_cert(tmp_path, "other")
    config = write(tmp_path, "feedd.yaml", MINIMAL.replace(
        'http: {listen: "127.0.0.1:0"}', 'http: {listen: "127.0.0.1:0", tls: {cert: server.crt, key: other.key}}'))
    daemon = Daemon(load_config(config, env={}), drain_seconds=1, workers=0)
    try:
        with pytest.raises(StartupError) as info:
            await daemon.start()
    finally:
        await daemon.stop()
    assert "server.crt" in info.value.message and "other.key" in info.value.message


async def test_reload_takes_a_renewed_certificate_and_keeps_the_old_when_the_new_is_bad(
        tls_api: Api, tmp_path: Path) -> None:
    old_pem = (tmp_path / "server.crt").read_bytes()
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    make_cert(renewed)
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_bytes((renewed / name).read_bytes())
    assert await tls_api.daemon.reload()

    async def healthz(ca: str) -> int:
        async with aiohttp.ClientSession() as session:
            async with session.get(tls_api.url + "/healthz", ssl=ssl.create_default_context(cafile=ca)) as resp:
                return resp.status

    assert await healthz(str(renewed / "server.crt")) == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await healthz(_saved(tmp_path, old_pem))
    # a certificate that does not match the key: the renewed pair stays in use
    (tmp_path / "server.crt").write_bytes(old_pem)
    await tls_api.daemon.reload()
    assert await healthz(str(renewed / "server.crt")) == 200


def _saved(folder: Path, pem: bytes) -> str:
    path = folder / "old-ca.crt"
    path.write_bytes(pem)
    return str(path)


async def test_console_cookies_are_secure_under_tls(start_api: Callable[..., Any], tmp_path: Path) -> None:
    make_cert(tmp_path)
    api: Api = await start_api(http_extra=f"tls: {{cert: server.crt, key: server.key}}\n  operators:\n"
                                          f"    - {{name: admin, password_hash: \"{DEMO_HASH}\", role: admin}}")
    url = api.url.replace("http://", "https://")
    trusted = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{url}/ui/login", ssl=trusted) as resp:
            assert resp.status == 200
            assert "; secure" in resp.headers["Set-Cookie"].lower()
            csrf = (await resp.text()).split('name="csrf" value="', 1)[1].split('"', 1)[0]
        async with session.post(f"{url}/ui/login", ssl=trusted, allow_redirects=False,
                                data={"csrf": csrf, "name": "admin", "password": DEMO_PASSWORD}) as resp:
            assert resp.status == 303
            [session_cookie] = [c for c in resp.headers.getall("Set-Cookie") if c.startswith("feedd_session=")]
            flags = {part.strip().lower() for part in session_cookie.split(";")[1:]}
            assert {"secure", "httponly", "samesite=strict"} <= flags
