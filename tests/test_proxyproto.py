"""The PROXY protocol header parser and reader: v1 and v2 as HAProxy sends them, strict limits, and no crash or
hang on any bytes at all."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedd import proxyproto
from feedd.proxyproto import Command, Header, ProxyProtocolError, parse, read_header

SIG = proxyproto.V2_SIGNATURE


def v2(command: int = 1, family: int = 1, transport: int = 1, body: bytes = b"", length: int | None = None,
       version: int = 2) -> bytes:
    size = len(body) if length is None else length
    return SIG + bytes([version << 4 | command, family << 4 | transport]) + struct.pack("!H", size) + body


def v2_tcp4(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    body = (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + struct.pack("!HH", sport, dport) + tlvs)
    return v2(body=body)


def v2_tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    body = (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
            + struct.pack("!HH", sport, dport))
    return v2(family=2, body=body)


def test_v1_tcp4_tcp6_and_unknown() -> None:
    line = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 2222\r\n"
    assert parse(line + b"SSH-2.0-x\r\n") == Header(1, Command.PROXY, len(line), ("203.0.113.7", 51000),
                                                   ("192.0.2.1", 2222))
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 443\r\n"
    got = parse(line)
    assert isinstance(got, Header)
    assert got.source == ("2001:db8::7", 65535, 0, 0) and got.length == len(line)
    got = parse(b"PROXY UNKNOWN ffff:f...f 1.2.3.4 9 9\r\nGET /")
    assert isinstance(got, Header) and got.source is None and got.command is Command.PROXY


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # a field missing
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
    b"PROXY TCP4 ::1 ::1 1 2\r\n",  # not IPv4
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",  # not IPv6
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",  # port out of range
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero: ambiguous, refused
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # scoped
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
    b"PROXY UNKNOWN \x00\r\n",
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"SSH-2.0-OpenSSH_9.2\r\n",  # a client that was not told about the balancer
    b"GET / HTTP/1.1\r\n",
    b"\x16\x03\x01\x02\x00",  # a TLS hello
])
def test_v1_refusals(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


def test_v1_length_limit() -> None:
    # 107 bytes with the CRLF is the most there can be; one byte more without a CRLF is refused
    longest = b"PROXY UNKNOWN " + b"x" * (proxyproto.V1_MAX - 16) + b"\r\n"
    assert len(longest) == proxyproto.V1_MAX
    assert isinstance(parse(longest), Header)
    with pytest.raises(ProxyProtocolError, match="longer than 107"):
        parse(b"PROXY UNKNOWN " + b"x" * 200)
    with pytest.raises(ProxyProtocolError):
        parse(b"PROXY UNKNOWN " + b"x" * (proxyproto.V1_MAX - 15) + b"\r\n")


def test_v2_tcp4_tcp6_local_and_tlvs_skipped() -> None:
    tlvs = bytes([0x05, 0x00, 0x03]) + b"abc" + bytes([0x04, 0x00, 0x00])  # UNIQUE_ID, NOOP
    header = v2_tcp4("127.0.0.2", "127.0.0.1", 40000, 2222, tlvs)
    got = parse(header + b"SSH-2.0-")
    assert got == Header(2, Command.PROXY, len(header), ("127.0.0.2", 40000), ("127.0.0.1", 2222))
    got = parse(v2_tcp6("2001:db8::2", "::1", 1, 2))
    assert isinstance(got, Header) and got.source == ("2001:db8::2", 1, 0, 0)
    # LOCAL: a health check from the balancer itself; the socket's address stands
    got = parse(v2(command=0, family=0, transport=0))
    assert got == Header(2, Command.LOCAL, 16)
    got = parse(v2(family=0, transport=0, body=b"\x00" * 5))  # UNSPEC: no address to use
    assert isinstance(got, Header) and got.source is None and got.length == 21
    got = parse(v2(family=3, body=b"\x00" * 216))  # UNIX
    assert isinstance(got, Header) and got.source is None


@pytest.mark.parametrize("data", [
    v2(version=1),
    v2(command=2),
    v2(family=4),
    v2(transport=3),
    v2(family=1, body=b"\x00" * 11),  # too short for two IPv4 addresses and ports
    v2(family=2, body=b"\x00" * 35),
    v2(length=proxyproto.V2_MAX_LENGTH + 1),
    SIG[:5] + b"X",
])
def test_v2_refusals(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


def test_partial_headers_ask_for_no_more_than_the_header() -> None:
    for header in (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY UNKNOWN\r\n",
                   v2_tcp4("1.2.3.4", "5.6.7.8", 1, 2), v2(command=0, family=0, transport=0)):
        for cut in range(len(header)):
            want = parse(header[:cut])
            assert isinstance(want, int) and 1 <= want <= len(header) - cut, (header, cut, want)


valid_headers = st.one_of(
    st.builds(lambda a, b, p, q: f"PROXY TCP4 {a} {b} {p} {q}\r\n".encode(),
              st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535)),
    st.builds(lambda a, b, p, q: f"PROXY TCP6 {a} {b} {p} {q}\r\n".encode(),
              st.ip_addresses(v=6).filter(lambda a: a.scope_id is None), st.ip_addresses(v=6), st.integers(0, 65535),
              st.integers(0, 65535)),
    st.builds(lambda a, b, p, q, t: v2_tcp4(str(a), str(b), p, q, t),
              st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535),
              st.binary(max_size=300)),
    st.builds(lambda a, b, p, q: v2_tcp6(str(a), str(b), p, q),
              st.ip_addresses(v=6), st.ip_addresses(v=6), st.integers(0, 65535), st.integers(0, 65535)),
    st.just(v2(command=0, family=0, transport=0)),
)


@given(st.binary(max_size=5000))
@settings(max_examples=2000, deadline=None)
def test_any_bytes_give_a_header_a_count_or_a_refusal(data: bytes) -> None:
    try:
        got = parse(data)
    except ProxyProtocolError:
        return
    if isinstance(got, Header):
        assert 0 < got.length <= len(data)
    else:
        assert got >= 1


@given(st.one_of(valid_headers, st.builds(lambda h, cut: h[:cut] + b"\x00", valid_headers, st.integers(0, 200))),
       st.binary(max_size=64))
@settings(max_examples=1000, deadline=None)
def test_prefixed_bytes_and_mutations(header: bytes, tail: bytes) -> None:
    data = header + tail
    try:
        got = parse(data)
    except ProxyProtocolError:
        return
    if isinstance(got, Header):
        assert got.length <= len(data)


@given(valid_headers, st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_valid_headers_parse_to_their_exact_length(header: bytes, tail: bytes) -> None:
    got = parse(header + tail)
    assert isinstance(got, Header) and got.length == len(header)


async def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


async def test_reader_takes_the_header_and_not_a_byte_more() -> None:
    for header in (b"PROXY TCP4 10.0.0.9 10.0.0.1 5 6\r\n", v2_tcp4("10.0.0.9", "10.0.0.1", 5, 6)):
        ours, theirs = await _pair()
        with ours, theirs:
            # sent in pieces, the tail in the same write as the header's end
            theirs.sendall(header[:7])
            task = asyncio.create_task(read_header(ours, 5))
            await asyncio.sleep(0)
            theirs.sendall(header[7:] + b"SSH-2.0-client\r\n")
            got = await task
            assert got.source == ("10.0.0.9", 5)
            assert ours.recv(100) == b"SSH-2.0-client\r\n"


async def test_reader_closes_out_a_silent_or_vanishing_client() -> None:
    ours, theirs = await _pair()
    with ours, theirs:
        theirs.sendall(b"PROXY TCP4 ")
        with pytest.raises(TimeoutError):
            await read_header(ours, 0.2)
    ours, theirs = await _pair()
    with ours:
        theirs.sendall(v2_tcp4("1.1.1.1", "2.2.2.2", 1, 2)[:20])
        theirs.close()
        with pytest.raises(ProxyProtocolError, match="closed before"):
            await read_header(ours, 5)


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=10))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_reader_never_hangs_on_any_bytes(data: bytes, cuts: list[int]) -> None:
    """Whatever arrives, in whatever pieces, the reader ends with a header or an error once the client has
    closed: never waits on when nothing more can come, never raises anything else."""

    async def run() -> None:
        ours, theirs = await _pair()
        with ours:
            rest = data
            for cut in cuts:
                theirs.sendall(rest[:cut])
                rest = rest[cut:]
            theirs.sendall(rest)
            theirs.close()
            try:
                got = await read_header(ours, 5)
            except ProxyProtocolError:
                return
            assert isinstance(got, Header) and got.length <= len(data)
            assert ours.recv(len(data) + 1) == data[got.length:]

    asyncio.run(run())
