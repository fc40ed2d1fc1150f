"""OpenPGP per connection (README, "OpenPGP"): inbound `*.pgp`, `*.gpg` and `*.asc` files decrypted before
they are read, and what feedd writes into a partner's outbox encrypted to the partner's keys.

GnuPG does the work, through python-gnupg: a `gpg` subprocess streams file to file, so a 1 GB input never
sits in memory, and it always runs in a worker process or a thread, never on the event loop. Each connection
has a GnuPG home of its own, `<state_dir>/pgp/<connection>` (mode 0700), into which its key files are
imported on first use and again whenever one of them changes (the home is then made anew, so a key taken
out of the config no longer decrypts anything). Passphrases come from the config (`${VAR}` in the file) and
reach gpg on a pipe (`--passphrase-fd`), never on a command line or in a log line; the agent is told not
to cache them, so a changed passphrase counts at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gnupg

from feedd.durable import copy_whole, fit_name

if TYPE_CHECKING:
    from feedd.config.values import Config

SUFFIXES = (".pgp", ".gpg", ".asc")  # inbound names that are decrypted first (with a `decrypt_key`)
SEALED = ".pgp"  # what an encrypted outbox file's name gets appended
MAX_PLAIN = 64 * 1024**3  # bytes out of one decryption
MAX_RATIO = 200  # plain / encrypted, past the first 10 MiB: OpenPGP compresses, so a small file can be a bomb
_BUFFER = 256 * 1024
_STAMP = "feedd-keys.json"  # in a home: which key files (by content) it was made from, and their keys
# python-gnupg logs each non-zero exit of gpg as a warning; the caller says what failed, once.
logging.getLogger("gnupg").setLevel(logging.ERROR)


class PgpError(Exception):
    """A decryption or encryption that did not happen; `code` is the run's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[PgpError], tuple[str, str]]:
        return PgpError, (self.code, self.message)  # raised in a worker, caught in the daemon


@dataclass(frozen=True, slots=True)
class Keys:
    """What a worker or a thread needs to use one connection's keys: plain values, sent to worker processes."""

    home: str  # the connection's GnuPG home
    key_files: tuple[str, ...]  # every key file of the connection: the home is made from all of them
    recipients: tuple[str, ...] = ()  # the `encrypt_to` files, whose keys encryption is to
    passphrase: str | None = field(default=None, repr=False)  # of the `decrypt_key`


def is_encrypted_name(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def plain_name(name: str) -> str:
    """The input's name without its encryption suffix (`staff.csv.pgp` -> `staff.csv`): what its format is
    detected from."""
    base = name.rsplit("/", 1)[-1]
    return (base[:-4] if is_encrypted_name(base) else base) or "input"


def sealed_name(name: str) -> str:
    return fit_name(name + SEALED)


def home_of(state_dir: Path, connection: str) -> Path:
    return state_dir / "pgp" / connection


def decryption(config: Config, connection: str, name: str) -> Keys | None:
    """The keys that decrypt an input of `connection` named `name`, or None when it is read as it is."""
    conn = config.connections.get(connection)
    pgp = conn.pgp if conn is not None else None
    if pgp is None or pgp.decrypt_key is None or not is_encrypted_name(name):
        return None
    return Keys(str(home_of(config.state_dir, connection)), _files(pgp.decrypt_key, pgp.encrypt_to),
                passphrase=pgp.passphrase)


def sealing(config: Config, connection: str) -> Keys | None:
    """The keys what feedd writes into `connection`'s outbox is encrypted to, or None (written plain)."""
    conn = config.connections.get(connection)
    pgp = conn.pgp if conn is not None else None
    if pgp is None or not pgp.encrypt_to:
        return None
    return Keys(str(home_of(config.state_dir, connection)), _files(pgp.decrypt_key, pgp.encrypt_to),
                recipients=tuple(str(p) for p in pgp.encrypt_to))


def _files(decrypt_key: Path | None, encrypt_to: tuple[Path, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(p) for p in ((decrypt_key,) if decrypt_key else ()) + encrypt_to))


# Checking key files at load (`feedd check`, every reload and API write): in a throwaway home, with no agent.

_checked: dict[tuple[str, int, int, int, bool], str | None] = {}


def check_key_file(path: Path, *, secret: bool) -> str | None:
    """Why `path` cannot serve as a connection's key (a secret key that decrypts, or a public key to
    encrypt to), or None when it can. Remembered per file version: the config is judged again at every
    API write, and gpg costs a process each time."""
    try:
        st = os.stat(path)
        with open(path, "rb"):
            pass
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino, secret)
    if key not in _checked:
        _checked[key] = _judge_key_file(path, secret)
    return _checked[key]


def _judge_key_file(path: Path, secret: bool) -> str | None:
    if shutil.which("gpg") is None:
        return "OpenPGP needs GnuPG's gpg, which is not installed (Debian: apt-get install gnupg)"
    with tempfile.TemporaryDirectory(prefix="feedd-pgp-") as home:
        found = gnupg.GPG(gnupghome=home, options=["--no-autostart"]).scan_keys(str(path))
    keys = [k for k in found if k.get("type") in ("pub", "sec")]
    if not keys:
        return f"{path} holds no OpenPGP key (export one with gpg --export{'-secret-keys' if secret else ''} --armor)"
    if secret and not any(k["type"] == "sec" for k in keys):
        return f"{path} holds a public key only; decrypt_key needs the secret key (gpg --export-secret-keys --armor)"
    if not any("E" in (k.get("cap") or "") for k in keys):
        return f"{path}: its key cannot encrypt (it has no usable encryption subkey)"
    return None


# A connection's home: made and filled on first use, made anew when a key file changes.


def _gpg(home: str) -> _Gpg:
    # loopback: a passphrase comes on our pipe or not at all; gpg never asks a pinentry that nobody sees
    gpg = _Gpg(gnupghome=home, options=["--pinentry-mode", "loopback"])
    gpg.buffer_size = _BUFFER
    return gpg


class _Gpg(gnupg.GPG):  # type: ignore[misc]  # python-gnupg ships no types
    """python-gnupg's GPG, keeping the gpg process it starts so that a decryption past its cap can be
    stopped rather than read to its end."""

    process: subprocess.Popen[bytes] | None = None

    def _open_subprocess(self, args: Any, passphrase: bool = False) -> subprocess.Popen[bytes]:
        self.process = super()._open_subprocess(args, passphrase)
        return self.process


def _stamp(keys: Keys) -> str:
    digest = hashlib.sha256()
    for name in keys.key_files:
        digest.update(name.encode() + b"\0")
        with open(name, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def ready(keys: Keys) -> dict[str, list[str]]:
    """The connection's home with its key files imported (done once per version of the files, under a lock,
    as several workers may ask at once); key file -> the fingerprints it gave."""
    home = Path(keys.home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)  # gpg refuses a home others can read, and so should we
    try:
        stamp = _stamp(keys)
    except OSError as exc:
        raise PgpError("decrypt_failed", f"cannot read the connection's key file: {exc}") from None
    with open(home / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError, ValueError):
            known = json.loads((home / _STAMP).read_text())
            if known.get("stamp") == stamp:
                return dict(known["keys"])
        _wipe(home)
        (home / "gpg-agent.conf").write_text("default-cache-ttl 0\nmax-cache-ttl 0\n")
        gpg = _gpg(keys.home)
        imported: dict[str, list[str]] = {}
        for name in keys.key_files:
            result = gpg.import_keys_file(name)
            if not result.fingerprints:
                raise PgpError("decrypt_failed", f"gpg imported no key from {name}")
            imported[name] = list(dict.fromkeys(result.fingerprints))
        (home / _STAMP).write_text(json.dumps({"stamp": stamp, "keys": imported}))
        return imported


def _wipe(home: Path) -> None:
    """Empty a home whose key files changed, its agent stopped first (it holds the secret keys)."""
    stop_agent(home)
    for entry in home.iterdir():
        if entry.name == ".lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def stop_agent(home: Path) -> None:
    if shutil.which("gpgconf") is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True,
                           timeout=10, check=False)


def stop_agents(state_dir: Path) -> None:
    """At the daemon's stop: the gpg-agent of each connection's home (started by gpg, outliving it)."""
    root = state_dir / "pgp"
    with contextlib.suppress(OSError):
        for home in root.iterdir():
            if home.is_dir() and (home / _STAMP).exists():
                stop_agent(home)


# Decrypting an input and sealing an outbox file.


def decrypt(keys: Keys, src: str, dest: str) -> None:
    """In a worker: `src` decrypted into `dest`, streamed through gpg. Raises PgpError (`decrypt_failed`,
    saying what gpg said; `unreadable_input` for a decompression bomb) and leaves no `dest` then."""
    ready(keys)
    gpg = _gpg(keys.home)
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    packed = max(os.path.getsize(src), 1)
    written = [0]
    bomb = [False]
    # the plain copy is for feedd's eyes only, whatever the umask says
    with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as sink:
        def take(chunk: bytes) -> bool:
            if bomb[0]:
                return False
            written[0] += len(chunk)
            if written[0] > MAX_PLAIN or (written[0] > 10 * 1024**2 and written[0] > MAX_RATIO * packed):
                bomb[0] = True
                if gpg.process is not None:
                    gpg.process.kill()
                return False
            sink.write(chunk)
            return False  # written here, not kept in memory by python-gnupg

        gpg.on_data = take
        result = gpg.decrypt_file(src, passphrase=keys.passphrase or None)
    if bomb[0]:
        out.unlink(missing_ok=True)
        raise PgpError("unreadable_input", f"it decrypts to more than {MAX_RATIO}x its size or {MAX_PLAIN} "
                                           "bytes: refused as a decompression bomb")
    if not result.ok or result.returncode != 0:
        out.unlink(missing_ok=True)
        said = _said(result, keys.home)
        if keys.passphrase is None and "batchmode" in said:
            said = "its key needs a passphrase and the connection has none (pgp.passphrase)"
        raise PgpError("decrypt_failed", f"could not be decrypted with this connection's key ({said})")


_SOCKET_MAX = 107  # bytes in a Unix socket's path (sun_path less its NUL)


def _said(result: Any, home: str) -> str:
    """What gpg said, short: its own error lines (not the status lines python-gnupg reads), else the status."""
    lines = [line.strip() for line in str(getattr(result, "stderr", "") or "").splitlines()
             if line.startswith("gpg: ") and not line.startswith("gpg: encrypted with ")]
    said = "; ".join(dict.fromkeys(lines[-3:])) or f"gpg: {result.status or 'failed'}"
    said = said if len(said) <= 300 else said[:297] + "..."
    if "agent" in said and len(os.path.join(home, "S.gpg-agent.browser").encode()) > _SOCKET_MAX:
        said += (f"; the GnuPG home {home} is too long a path for gpg-agent's sockets (at most {_SOCKET_MAX} "
                 "bytes): give feedd a shorter state_dir")
    return said


def seal(keys: Keys, src: Path, dest: Path) -> Path:
    """In a thread: `src` encrypted to the connection's `encrypt_to` keys, placed at `dest` as a whole
    file (encrypted beside the home first, then copied in under a temporary name and renamed, as every
    outbox file is), so that the partner never sees half of it."""
    imported = ready(keys)
    recipients = list(dict.fromkeys(fp for name in keys.recipients for fp in imported.get(name, [])))
    if not recipients:
        raise PgpError("encrypt_failed", "no key to encrypt to")
    work = Path(keys.home).with_name(Path(keys.home).name + ".sealing")
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = work / uuid.uuid4().hex
    try:
        # the connection's keys are trusted because the config names them: no web of trust to consult
        result = _gpg(keys.home).encrypt_file(str(src), recipients, armor=False, output=str(tmp),
                                              always_trust=True)
        if not result.ok or result.returncode != 0:
            raise PgpError("encrypt_failed", f"gpg could not encrypt {src.name} ({_said(result, keys.home)})")
        return copy_whole(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def seal_bytes(keys: Keys, data: bytes, dest: Path) -> Path:
    """`data` (a text feedd made) sealed into `dest` like `seal`."""
    work = Path(keys.home).with_name(Path(keys.home).name + ".sealing")
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    plain = work / (uuid.uuid4().hex + ".plain")
    try:
        with open(plain, "wb") as f:
            f.write(data)
        return seal(keys, plain, dest)
    finally:
        plain.unlink(missing_ok=True)
