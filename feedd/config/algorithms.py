"""`sftp.algorithms`: the SSH algorithms the SFTP server offers, their defaults, what asyncssh accepts
for each list, and which choices are weak (reported by `feedd check` and at start)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from feedd.config.reader import At, Bad, Converter, Reader, string
from feedd.config.units import suggest

# OpenSSH's own defaults without SHA-1, less what ssh-audit fails: the NIST-curve key exchanges
# (`ecdh-sha2-nistp*`, which a partner's stack may still need: it can be configured) and group
# exchange (asyncssh would answer a client asking for a 1024-bit group with one). The encrypt-and-MAC
# MACs and group14-sha256 are here for clients that have nothing better (libssh2 before 1.11, so
# curl, has no ETM MAC): ssh-audit warns about them, and a client that has better picks better, as the
# server takes the first of the client's list that it offers.
KEX = ("mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org",
       "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512", "diffie-hellman-group14-sha256")
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "umac-128-etm@openssh.com",
        "umac-64-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512", "umac-128@openssh.com",
        "umac-64@openssh.com")
# What the server signs its host key with. asyncssh offers every signature an RSA key can make, SHA-1
# `ssh-rsa` included, unless told otherwise.
HOST_KEY = ("ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521")


@dataclass(frozen=True, slots=True)
class Algorithms:
    kex: tuple[str, ...] = KEX
    ciphers: tuple[str, ...] = CIPHERS
    macs: tuple[str, ...] = MACS
    host_key: tuple[str, ...] = HOST_KEY


def _names(algs: list[bytes]) -> tuple[str, ...]:
    # GSS key exchange needs Kerberos credentials feedd does not have
    return tuple(a.decode() for a in algs if not a.startswith(b"gss-"))


@functools.cache
def supported(kind: str) -> tuple[str, ...]:
    """What asyncssh accepts of `kind`. asyncssh is imported only here, when a config names algorithms:
    the config package is imported by every worker process too, and asyncssh with cryptography costs
    each of them about 0.2 s and 20 MiB at start (measured with the pipeline benchmark)."""
    from asyncssh.encryption import get_encryption_algs
    from asyncssh.kex import get_kex_algs
    from asyncssh.mac import get_mac_algs
    from asyncssh.public_key import get_public_key_algs

    lists = {"kex": get_kex_algs, "ciphers": get_encryption_algs, "macs": get_mac_algs,
             "host_key": get_public_key_algs}
    return _names(lists[kind]())


def _listed(kind: str) -> Converter[tuple[str, ...]]:
    def conv(r: Reader, v: Any, at: At) -> tuple[str, ...]:
        out: list[str] = []
        for item, sub in r.items(v, at):
            try:
                name = string(r, item, sub)
            except Bad as exc:
                r.issue(sub, str(exc))
                continue
            if name not in supported(kind):
                r.issue(sub, f"unknown {kind} algorithm {name!r}{suggest(name, supported(kind))}")
            elif name not in out:
                out.append(name)
        if not out:
            raise Bad("expected at least one algorithm")
        return tuple(out)

    return conv


def algorithms(r: Reader, v: Any, at: At) -> Algorithms:
    m = r.mapping(v, at, ("kex", "ciphers", "macs", "host_key"))
    return Algorithms(
        kex=r.get(m, at, "kex", _listed("kex"), KEX),
        ciphers=r.get(m, at, "ciphers", _listed("ciphers"), CIPHERS),
        macs=r.get(m, at, "macs", _listed("macs"), MACS),
        host_key=r.get(m, at, "host_key", _listed("host_key"), HOST_KEY),
    )


def weakness(name: str) -> str | None:
    """Why offering `name` weakens the server, or None."""
    if "sha1" in name or name in ("ssh-rsa", "ssh-dss", "rsa1024-sha1"):
        return "SHA-1"
    if name.endswith("-cbc") or "-cbc@" in name:
        return "CBC mode (plaintext recovery attacks)"
    if "arcfour" in name:
        return "RC4"
    if "md5" in name:
        return "MD5"
    return None


def weak(algs: Algorithms) -> list[str]:
    """One line per weak algorithm offered, as `sftp.algorithms.<list>: <name> uses <why>`."""
    out = []
    for kind in ("kex", "ciphers", "macs", "host_key"):
        for name in getattr(algs, kind):
            why = weakness(name)
            if why is not None:
                out.append(f"sftp.algorithms.{kind}: {name} uses {why}; offer it only while a partner needs it")
    return out
