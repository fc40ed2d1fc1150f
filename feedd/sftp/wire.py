"""What feedd changes in asyncssh's SSH transport and SFTP server, each a small self-contained step.

Nothing is changed on import: `install()` applies the changes when the SFTP server starts. Each change is
written against one asyncssh release's code, so each checks the asyncssh version and a fingerprint of the
code it replaces or relies on, and where either differs keeps asyncssh's own code and says so in one log
line (`sftp.fast_path_skipped`). Only server connections are changed: the delivery client stays stock.
The speed-ups (the fast path) can be turned off with `sftp.fast_path: false`; the fixes stay on.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh
from asyncssh import sftp as asyncssh_sftp
from asyncssh.channel import SSHChannel, SSHServerChannel
from asyncssh.connection import SSHConnection, SSHServerConnection
from asyncssh.constants import FXP_READ, FXP_WRITE, MSG_CHANNEL_DATA, MSG_IGNORE
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.encryption import GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import DisconnectError, ProtocolError
from asyncssh.packet import PacketDecodeError, SSHPacket, SSHPacketLogger, String
from asyncssh.sftp import MAX_SFTP_PACKET_LEN, SFTPHandler, SFTPInvalidHandle, SFTPLimits, SFTPServerHandler
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from feedd import log
from feedd.sftp.files import MAX_HANDLES, MAX_READ

# What OpenSSH's sftp-server advertises. asyncssh advertises 4 MiB, which makes asyncssh clients send
# 4 MiB writes that cost about half the throughput to reassemble; 255 KiB keeps the pipeline full.
MAX_WRITE = 261120
# SSH channel packets: asyncssh offers 32 KiB, so a client splits each 255 KiB write into 8 packets, and
# the per-packet work in Python (decrypt call, channel bookkeeping, reassembly) is what limits an upload.
# 256 KiB lets a whole write travel in one packet (OpenSSH's own limit for a packet is 256 KiB). asyncssh's
# client takes the offer; OpenSSH's and paramiko's clients send 32 KiB packets whatever is offered
# (measured), which is what the receive path below is shaped for.
MAX_PKTSIZE = 256 * 1024


async def _process_limits(self: SFTPServerHandler, packet: Any) -> SFTPLimits:
    packet.check_end()
    return SFTPLimits(MAX_SFTP_PACKET_LEN, MAX_READ, MAX_WRITE, MAX_HANDLES)



# asyncssh turns every debug message's arguments into text, and names and sizes every packet for its
# packet log, before asking whether debug logging is on: about 5% of the loop's time serving uploads.
# That work is skipped when its result would be thrown away; enabled debug logging is unchanged. Only the
# loggers of server connections (and of their channels and sessions, which inherit the class) skip it.
_ssh_log = SSHLogger.log
_log_packet = SSHPacketLogger._log_packet
_server_init = SSHServerConnection.__init__


class ServerSSHLogger(SSHLogger):
    """asyncssh's logger for a server connection, which formats a message only when it will be logged."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            _ssh_log(self, level, msg, *args, **kwargs)


def _init_with_server_logger(self: SSHServerConnection, *args: Any, **kwargs: Any) -> None:
    _server_init(self, *args, **kwargs)
    self._logger.__class__ = ServerSSHLogger  # children are made with `type(self)`: they follow


def _log_packet_if_enabled(self: SSHPacketLogger, msg: str, pkttype: int, pktid: Any, packet: Any,
                           note: str) -> None:
    logger = self.logger
    if not isinstance(logger, ServerSSHLogger) or (  # as SSHLogger.packet asks
            logger._debug_level >= 3 and logger.isEnabledFor(logging.DEBUG)):
        _log_packet(self, msg, pkttype, pktid, packet, note)


# Once encryption is on, asyncssh sends an empty SSH_MSG_IGNORE ahead of every packet: the countermeasure
# for CBC-mode ciphers (CVE-2008-5161). No CBC cipher is offered by default (sftp.algorithms), and for the
# ciphers that are, it only doubles what the server sends: two encryptions and two socket writes on
# the server, two decryptions in the client, for every SFTP reply. The server leaves them out; client
# connections (delivery to a remote SFTP server) are not changed, nor is a CBC cipher configured there.
_send_packet = SSHConnection.send_packet
_EMPTY = String(b"")


def _send_packet_without_cbc_padding(self: SSHServerConnection, pkttype: int, *args: bytes,
                                     handler: SSHPacketLogger | None = None) -> None:
    # (Should asyncssh stop naming the cipher there, the packets are sent as before.)
    if pkttype == MSG_IGNORE and args == (_EMPTY,) and b"-cbc" not in getattr(self, "_enc_alg_sc", b"-cbc"):
        return
    _send_packet(self, pkttype, *args, handler=handler)




# asyncssh keeps what it has received in one bytes object, appends each read to it (up to 256 KiB) and
# cuts each packet's header and body off its front: each cut copies all the bytes behind it. An OpenSSH
# client sends 32 KiB packets, so a 256 KiB read was copied about eight times over (0.87 s per GiB in a
# loop alone). Here a read is handed over one piece at a time, as much as the packet being read still
# needs: its header, then its body. The parser is asyncssh's own, unchanged; in any other state (the
# version line; a packet still being processed asynchronously), or for a small read, the rest of the
# read goes over at once, as before. With AES-GCM the pieces are views into the read, and the decryption
# below takes them as they are: the packet is copied once on its way to the cipher instead of four times.
# Measured with OpenSSH's client on 1 GiB, 14 interleaved rounds: 414 -> 499 MiB/s, CPU 3.39 -> 2.97 s.
_recv_pkthdr = SSHConnection._recv_pkthdr
_recv_packet = SSHConnection._recv_packet
_SMALL_READ = 64 * 1024


def _still_needed(self: SSHServerConnection) -> int:
    handler = getattr(self._recv_handler, "__func__", None)
    if handler is _recv_pkthdr:
        return int(self._recv_blocksize) - len(self._inpbuf)
    if handler is _recv_packet:
        return 4 + int(self._pktlen) + int(self._recv_macsize) - int(self._recv_blocksize) - len(self._inpbuf)
    return 0


def _data_received_by_packet(self: SSHServerConnection, data: bytes, datatype: Any = None) -> None:
    if len(data) <= _SMALL_READ:
        self._inpbuf += data
        self._recv_data()
        return
    self._reset_keepalive_timer()
    conn: Any = self  # asyncssh's buffer holds a view of the read between two pieces
    view = memoryview(data)
    pos, end = 0, len(data)
    try:
        while pos < end:
            need = _still_needed(self)
            encryption = self._recv_encryption
            if type(encryption) is GCMEncryption:  # this connection's, after each exchange of keys
                encryption.__class__ = ServerGCMEncryption
            source = view if type(encryption) is ServerGCMEncryption else data
            piece = source[pos:pos + need] if need > 0 else data[pos:]
            pos += len(piece)
            conn._inpbuf = b"".join((self._inpbuf, piece)) if self._inpbuf else piece
            while self._inpbuf and self._recv_handler():
                pass
    except DisconnectError as exc:  # as asyncssh's own _recv_data
        self._send_disconnect(exc.code, exc.reason, exc.lang)
        self._force_close(exc)
    except Exception:
        self.internal_error()
    finally:
        if type(conn._inpbuf) is memoryview:  # what asyncssh's own code appends to stays bytes
            self._inpbuf = bytes(conn._inpbuf)


class ServerGCMEncryption(GCMEncryption):
    """AES-GCM for what a server connection receives, taking the packet's parts as views."""

    def decrypt_packet(self, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes) -> bytes | None:
        cipher = self._cipher  # as GCMCipher.verify_and_decrypt, with one join for its two concatenations
        try:
            packet: bytes | None = AESGCM(cipher._key).decrypt(
                cipher._iv, b"".join((first[header_len:], rest, mac)), first[:header_len])
        except InvalidTag:
            packet = None
        cipher._update_iv()
        return packet


# Two more copies of every uploaded byte, made only to be copied again: the channel's data field and
# the SFTP write's data field are each cut out of their packet (`get_string`), then joined into the
# SFTP packet and written. Here both are views into the packet they came in; the SFTP packet is still
# assembled with one join, and the write takes the view as it is. Only server channels without a text
# encoding (SFTP sessions: the only channels feedd serves) are changed; asyncssh's debug lines for these
# two packets are left out. Measured on 1 GiB with OpenSSH's client, on top of the change above, 10
# interleaved rounds: 408 -> 433 MiB/s and 3.43 -> 3.29 s of CPU, within this machine's noise.
def _string_view(packet: SSHPacket) -> memoryview:
    """A length-prefixed string of `packet` as a view into it (`get_string` copies it)."""
    size = packet.get_uint32()
    start = packet._idx
    if start + size > packet._len:
        raise PacketDecodeError("Incomplete packet")
    packet._idx = start + size
    return memoryview(packet._packet)[start:start + size]


_process_data = SSHChannel._packet_handlers[MSG_CHANNEL_DATA]


def _process_data_as_view(self: SSHChannel[Any], pkttype: int, pktid: int, packet: SSHPacket) -> None:
    if not isinstance(self, SSHServerChannel) or self._encoding:
        _process_data(self, pkttype, pktid, packet)
        return
    if self._recv_state != "open":  # as asyncssh's _process_data
        raise ProtocolError("Channel not open for sending")
    data = _string_view(packet)
    packet.check_end()
    if len(data) > self._recv_window:
        raise ProtocolError("Window exceeded")
    self._accept_data(data)  # type: ignore[arg-type]


async def _process_write_view(self: SFTPServerHandler, packet: SSHPacket) -> int:
    handle = packet.get_string()  # as asyncssh's _process_write, with the data as a view
    offset = packet.get_uint64()
    data = _string_view(packet)
    if self._version < 6:
        packet.check_end()
    file_obj = self._file_handles.get(handle)
    if not file_obj:
        raise SFTPInvalidHandle("Invalid file handle")
    result = self._server.write(file_obj, offset, data)  # type: ignore[arg-type]
    if inspect.isawaitable(result):
        result = await result
    return int(result)




# rclone before 1.62 (pkg/sftp before 1.13.6, still what Debian 12 ships) sends the last, short write of
# an upload with the rest of its 32 KiB buffer behind the data: the data's own length is right, the
# packet is longer. OpenSSH's sftp-server (and pkg/sftp's, so SFTPGo) write the data and skip the rest;
# asyncssh refuses the packet, and rclone fails the upload. Here a WRITE packet ends where its data ends
# (SFTP v3-5: nothing follows the data), so the handler, the fast path's or asyncssh's, sees a packet it
# accepts. A packet too short for its data is left as it is, for the handler to refuse.
_server_process_packet = SFTPServerHandler._process_packet


def _write_end(packet: SSHPacket) -> int | None:
    """Where a WRITE's data ends in `packet` (positioned after the request id), or None if it does not fit."""
    buf, pos = packet._packet, packet._idx
    if pos + 4 > packet._len:
        return None
    pos += 4 + int.from_bytes(buf[pos:pos + 4], "big") + 8  # handle, offset
    if pos + 4 > packet._len:
        return None
    end = pos + 4 + int.from_bytes(buf[pos:pos + 4], "big")  # data
    return end if end <= packet._len else None


async def _process_packet_without_write_padding(self: SFTPServerHandler, pkttype: int, pktid: int,
                                                packet: SSHPacket) -> None:
    if pkttype == FXP_WRITE and self._version < 6:
        end = _write_end(packet)
        if end is not None:
            packet._len = end
    await _server_process_packet(self, pkttype, pktid, packet)


# A session whose channel closes before the client's INIT (a client that gives up at once, or a session
# the server refuses) ends with an EOF that asyncssh's handler does not catch there: the SFTP server's
# exit() never runs, and the error closes the whole SSH connection, other sessions included. Here that
# EOF ends the session as any later one does.
_run = SFTPServerHandler.run


async def _run_ending_at_eof(self: SFTPServerHandler) -> None:
    try:
        await _run(self)
    except EOFError:
        await self._cleanup(None)




# OpenSSH's sshd reports the exit status of its sftp-server when a session ends; asyncssh closes the
# channel without one, and OpenSSH's ssh then exits 255, which `scp` (speaking SFTP since OpenSSH 9.0)
# reports as a failure after a good upload. Here the session's end reports 0 (1 when it ended on an
# error), after the session's files are closed (a file still open on a closing channel is a partial
# upload) and before the channel closes: asyncssh's own steps, in its order, with the status between.
_server_cleanup = SFTPServerHandler._cleanup
_handler_cleanup = SFTPHandler._cleanup


async def _cleanup_reporting_exit(self: SFTPServerHandler, exc: Exception | None) -> None:
    server: Any = self._server
    if server:
        for file_obj in list(self._file_handles.values()):
            result = server.close(file_obj)
            if inspect.isawaitable(result):
                await result
        result = server.exit()
        if inspect.isawaitable(result):
            await result
        self._file_handles = {}
        self._dir_handles = {}
    self.logger.info("SFTP server exited%s", ": " + str(exc) if exc else "")
    writer = self._writer
    if writer is not None and isinstance(writer.channel, SSHServerChannel):
        writer.channel.exit(0 if exc is None else 1)
    await _handler_cleanup(self, exc)


# An SFTP session handles its requests one after the other, and asyncssh queues each reply in full
# whether or not the client takes it: a client that sends READs and reads nothing back would have the
# server hold every reply. Before a READ is served, the replies already queued must have left: the
# channel's buffer below its low-water mark (flow control asyncssh keeps per channel, bounded by the
# window the client grants), and the connection's socket taking writes again (a client may grant any
# window and then not read its socket). So a session holds at most about one READ's reply at a time.
_process_read = SFTPServerHandler._process_read


async def _process_read_when_sent(self: SFTPServerHandler, packet: SSHPacket) -> Any:
    writer = self._writer
    if writer is not None:
        await writer.drain()
        await _socket_drained(writer.channel.get_connection())
    return await _process_read(self, packet)


_drained_waiters: weakref.WeakKeyDictionary[SSHConnection, asyncio.Future[None]] = weakref.WeakKeyDictionary()


async def _socket_drained(conn: SSHConnection) -> None:
    waiter = _drained_waiters.get(conn)
    if waiter is not None and not waiter.done():
        await asyncio.shield(waiter)


def _pause_writing(self: SSHConnection) -> None:
    waiter = _drained_waiters.get(self)
    if waiter is None or waiter.done():
        _drained_waiters[self] = asyncio.get_running_loop().create_future()


def _wake(self: SSHConnection) -> None:
    waiter = _drained_waiters.pop(self, None)
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


_connection_lost = SSHServerConnection.connection_lost


def _connection_lost_waking(self: SSHConnection, exc: Exception | None = None) -> None:
    _wake(self)  # a READ waiting for a socket that is gone goes on, and fails on the closed channel
    _connection_lost(self, exc)


# asyncssh's server-side copy (`copy-data`) reads 256 KiB at a time and takes a shorter read for the end
# of the file: with READs clamped below that, a copy would stop after its first block.


@dataclass(frozen=True)
class Change:
    """One change to asyncssh: what it replaces, the asyncssh code it is written against, how to apply
    and undo it. `fast` ones are the fast path (`sftp.fast_path`); the others are fixes."""

    name: str
    fast: bool
    relies_on: tuple[Callable[..., Any], ...]
    apply: Callable[[], None]
    undo: Callable[[], None]


def _attr(owner: Any, name: str, new: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """Apply/undo for `owner.name = new`; undo puts back what the class itself had (or inherited)."""
    had = name in vars(owner)
    old = vars(owner).get(name)

    def apply() -> None:
        setattr(owner, name, new)

    def undo() -> None:
        if had:
            setattr(owner, name, old)
        elif name in vars(owner):
            delattr(owner, name)

    return apply, undo


def _item(table: dict[Any, Any], key: Any, new: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    had = key in table
    old = table.get(key)

    def apply() -> None:
        table[key] = new

    def undo() -> None:
        if had:
            table[key] = old
        else:
            table.pop(key, None)

    return apply, undo


def _change(name: str, fast: bool, relies_on: tuple[Callable[..., Any], ...],
            *steps: tuple[Callable[[], None], Callable[[], None]]) -> Change:
    def apply() -> None:
        for step, _ in steps:
            step()

    def undo() -> None:
        for _, step in steps:
            step()

    return Change(name, fast, relies_on, apply, undo)


CHANGES: tuple[Change, ...] = (
    _change("SFTPServerHandler limits@openssh.com", False, (SFTPServerHandler._process_limits,),
            _item(SFTPServerHandler._packet_handlers, b"limits@openssh.com", _process_limits)),
    _change("SSHLogger.log", True, (SSHLogger.log, SSHLogger.get_child, SSHPacketLogger._log_packet),
            _attr(SSHServerConnection, "__init__", _init_with_server_logger),
            _attr(SSHPacketLogger, "_log_packet", _log_packet_if_enabled)),
    _change("SSHConnection.send_packet", True, (SSHConnection.send_packet,),
            _attr(SSHServerConnection, "send_packet", _send_packet_without_cbc_padding)),
    _change("SSHConnection.data_received", True,
            (SSHConnection.data_received, SSHConnection._recv_data, _recv_pkthdr, _recv_packet,
             GCMEncryption.decrypt_packet, GCMCipher.verify_and_decrypt),
            _attr(SSHServerConnection, "data_received", _data_received_by_packet)),
    _change("SSHChannel._process_data", True, (_process_data, SSHChannel._accept_data, SSHPacket.get_string),
            _item(SSHChannel._packet_handlers, MSG_CHANNEL_DATA, _process_data_as_view)),
    _change("SFTPServerHandler._process_write", True, (SFTPServerHandler._process_write, SSHPacket.get_string),
            _item(SFTPServerHandler._packet_handlers, FXP_WRITE, _process_write_view)),
    _change("SFTPServerHandler._process_packet", False,
            (_server_process_packet, SFTPServerHandler._process_write, SSHPacket.__init__, SSHPacket.check_end),
            _attr(SFTPServerHandler, "_process_packet", _process_packet_without_write_padding)),
    _change("SFTPServerHandler.run", False, (_run, SFTPServerHandler._cleanup),
            _attr(SFTPServerHandler, "run", _run_ending_at_eof)),
    _change("SFTPServerHandler._cleanup", False, (_server_cleanup, _handler_cleanup),
            _attr(SFTPServerHandler, "_cleanup", _cleanup_reporting_exit)),
    _change("SFTPServerHandler._process_read", False,
            (_process_read, SFTPServerHandler._process_copy_data, SSHConnection.pause_writing,
             SSHConnection.resume_writing, _connection_lost),
            _item(SFTPServerHandler._packet_handlers, FXP_READ, _process_read_when_sent),
            _attr(asyncssh_sftp, "_COPY_DATA_BLOCK_SIZE", MAX_READ),
            _attr(SSHServerConnection, "pause_writing", _pause_writing),
            _attr(SSHServerConnection, "resume_writing", _wake),
            _attr(SSHServerConnection, "connection_lost", _connection_lost_waking)),
)

# The asyncssh releases these changes are written for, and a sha256 of the source of the asyncssh code
# each relies on, as in asyncssh 2.24.1.
VERSIONS = ((2, 24, 1), (2, 25, 0))  # from, up to (not included)
FINGERPRINTS: dict[str, str] = {
    "SFTPServerHandler limits@openssh.com": "62a6a3cb0ec8ec7ce6dc44f301d60b240cac251c2168d82cef3a985350f1b12d",
    "SSHLogger.log": "ddc0a56b6c2b8066b9cf1ccec2c97eafa5604c3195ff92e744e53c3d4d72081b",
    "SSHConnection.send_packet": "fb9da7bec6dd395a2f379f8a0f4dbfc5f194ff80e1ed8630d9a6dbf291359406",
    "SSHConnection.data_received": "48aa91d46a564858b7447c3bf737922f7af529523fc5a1ddfadb8105a35b1059",
    "SSHChannel._process_data": "b4ea33532bf396ba9d1c25dc52dbd4ed5c80b188c757cdf880a3a6cda311698f",
    "SFTPServerHandler._process_write": "817b7167e8f067f3b5232bf4a0b40f48722d46b374756d28207583501ee5dc10",
    "SFTPServerHandler._process_packet": "036ea3bbd3bca656105449efe9e4013777853fb7b9017afd22e6e29ba471b416",
    "SFTPServerHandler.run": "ad8f00383c7b6a5c9e12ee8928fdc69ec60e41ca798ee0d2af734a059df58d9d",
    "SFTPServerHandler._cleanup": "eedf43d8b46e600be714c754f4f2fd9b1417ff05b5053a4eb6946442c18176eb",
    "SFTPServerHandler._process_read": "20994b97bbaa6b071c97cd7f7b5e9ea82f2a7889c38a7524a84eb6e731587819",
}


def fingerprint(change: Change) -> str:
    """sha256 of the source of the asyncssh code `change` relies on ("" when the source is not there)."""
    digest = hashlib.sha256()
    for code in change.relies_on:
        try:
            digest.update(inspect.getsource(code).encode())
        except (OSError, TypeError):
            return ""
    return digest.hexdigest()


def _version() -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in asyncssh.__version__.split(".")[:3])
    except ValueError:
        return ()


def install(fast_path: bool = True) -> list[str]:
    """Apply the changes (the fast path's only with `fast_path`), each only where asyncssh's code is the
    code it was written for; undo the others. The names of the changes applied."""
    applied = []
    version = _version()
    for change in CHANGES:
        change.undo()
        if change.fast and not fast_path:
            continue
        if not VERSIONS[0] <= version < VERSIONS[1]:
            why = f"asyncssh {asyncssh.__version__} is not a release this change was written for"
        elif fingerprint(change) != FINGERPRINTS.get(change.name):
            why = "asyncssh's code for it is not the code this change was written for"
        else:
            change.apply()
            applied.append(change.name)
            continue
        log.get().warning("sftp.fast_path_skipped", function=change.name, reason=why)
    return applied
