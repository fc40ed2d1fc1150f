"""The SFTP server's host keys: made once for a fresh state, never silently replaced afterwards."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from feedd.config import Config
from feedd.config.values import StoreType
from feedd.errors import StartupError

ED25519 = "ssh_host_ed25519_key"
RSA = "ssh_host_rsa_key"


@dataclass(frozen=True, slots=True)
class HostKey:
    path: Path
    algorithm: str
    fingerprint: str  # SHA256:..., as `ssh-keygen -l` prints it

    def __str__(self) -> str:
        return f"{self.fingerprint} {self.algorithm} {self.path}"


def key_dir(config: Config) -> Path:
    return config.state_dir / "host_keys"


def _write_private(path: Path, key: asyncssh.SSHKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key("openssh"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key("openssh"))


def _describe(path: Path) -> HostKey:
    key = asyncssh.read_private_key(str(path))
    return HostKey(path, key.get_algorithm(), key.get_fingerprint("sha256"))


def generate(config: Config) -> list[HostKey]:
    """Make a new ed25519 key (and an RSA key for clients without ed25519), replacing any old ones."""
    directory = key_dir(config)
    _write_private(directory / ED25519, asyncssh.generate_private_key("ssh-ed25519"))
    _write_private(directory / RSA, asyncssh.generate_private_key("ssh-rsa", key_size=3072))
    return [_describe(directory / ED25519), _describe(directory / RSA)]


def ensure(config: Config, *, state_exists: bool) -> tuple[list[HostKey], bool]:
    """The host keys to serve with, and whether they were just generated.

    A fresh state (no database, no key directory) gets new keys. A state that exists without its key
    is refused: a host key that changes silently looks like a man-in-the-middle to every partner. With
    PostgreSQL the database is shared, so a node whose state_dir lacks the key the others serve with is
    refused too, instead of making a key of its own.
    """
    if config.sftp.host_keys:
        missing = [p for p in config.sftp.host_keys if not p.is_file()]
        if missing:
            raise StartupError(f"host key file not found: {', '.join(map(str, missing))} (sftp.host_keys)")
        return [_describe(p) for p in config.sftp.host_keys], False
    directory = key_dir(config)
    paths = [p for p in (directory / ED25519, directory / RSA) if p.is_file()]
    if paths:
        return [_describe(p) for p in paths], False
    if config.store.type is StoreType.POSTGRESQL and state_exists:
        raise StartupError(
            f"host key {directory / ED25519} is missing but other nodes of the PostgreSQL store (store.dsn) "
            "serve with a host key. Refusing to start with a new key: partners would see a changed host key. "
            "Give this node the same host keys (share state_dir, or copy host_keys/ from another node)."
        )
    if state_exists or directory.exists():
        raise StartupError(
            f"host key {directory / ED25519} is missing but the state in {config.state_dir} exists. "
            "Refusing to start with a new key: partners would see a changed host key. Restore the key from "
            "a backup, or run `feedd hostkey --generate` to make a new one on purpose and tell partners its "
            "fingerprint."
        )
    return generate(config), True
