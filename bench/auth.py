"""Logins under a burst: 100 concurrent logins from one address, and an upload that runs meanwhile.

    python bench/auth.py [--logins 100] [--tries 3] [--size-mib 1024] [--lead 1.5] [--rounds 3] [--no-openssh]

Starts `feedd serve` (one connection with a password and a key) and, as the anchor, OpenSSH's sshd with its
default MaxStartups (10:30:100; keys only, as it has no password to check without PAM). Per round it fires
the burst at each server from 127.0.0.1, every client trying up to `--tries` times (0.5 to 1.5 s apart),
and prints how many got in at the first try and within the tries, and the server's CPU per login. Then it
uploads a `--size-mib` file to feedd over asyncssh and fires a password burst `--lead` seconds into it:
it prints the upload's MiB/s while the burst ran against its MiB/s before (and after) it, in the same
upload, so that the machine's other load weighs on both alike. Clients run in processes of their own, on
the same machine, and prefer the ed25519 host key as OpenSSH's client does (asyncssh's own default picks
RSA, whose signature costs the server ~3 ms of its event loop per login). Figures are medians over the rounds. The anchor needs /usr/sbin/sshd and root (for its
chroot). It prints figures; it gates nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from feedd.credentials import hash_password

_spec = importlib.util.spec_from_file_location("bench_sftp", Path(__file__).with_name("sftp.py"))
assert _spec is not None
assert _spec.loader is not None
bench_sftp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_sftp)

BURST = """
import asyncio, json, random, sys, time
import asyncssh
port, user, kind, secret, count, tries = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
auth = {"password": secret, "client_keys": None} if kind == "password" else {"client_keys": [secret]}
HOST_KEY_ALGS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]  # OpenSSH's client order, not asyncssh's (RSA first)
async def one():
    for attempt in range(1, tries + 1):
        try:
            async with asyncssh.connect("127.0.0.1", port, username=user, known_hosts=None, agent_path=None,
                                        login_timeout=60, server_host_key_algs=HOST_KEY_ALGS, **auth):
                return attempt
        except (OSError, asyncssh.Error):
            if attempt < tries:
                await asyncio.sleep(random.uniform(0.5, 1.5))
    return 0
async def main():
    start = time.monotonic()
    got = await asyncio.gather(*(one() for _ in range(count)))
    print(json.dumps({"start": start, "end": time.monotonic(), "tries": got}))
asyncio.run(main())
"""

UPLOAD = """
import asyncio, json, sys, time
import asyncssh
port, user, key, path, remote = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
async def main():
    samples = []
    def progress(src, dst, done, total):
        now = time.monotonic()
        if now - samples[-1][0] >= 0.02 or done == total:
            samples.append((now, done))
    async with asyncssh.connect("127.0.0.1", port, username=user, client_keys=[key], known_hosts=None,
                                agent_path=None, encryption_algs=["aes128-gcm@openssh.com"],
                                server_host_key_algs=["ssh-ed25519"]) as conn:
        async with conn.start_sftp_client() as sftp:
            samples.append((time.monotonic(), 0))
            await sftp.put(path, remote, progress_handler=progress)
    print(json.dumps(samples))
asyncio.run(main())
"""


def start_feedd(work: Path, pubkey: str, password: str) -> bench_sftp.Feedd:
    """`feedd serve` with one connection, `bench`, that logs in with a password or a key."""
    return bench_sftp.Feedd(work, pubkey, password_hash=hash_password(password))


def spawn(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str]) -> Any:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"a client process failed ({proc.returncode})")
    return json.loads(out)


def burst(pid: int, port: int, user: str, kind: str, secret: str, logins: int, tries: int) -> dict[str, float]:
    """The burst's figures, with the server's CPU seconds per login (sshd's include its reaped children)."""
    cpu0 = bench_sftp.cpu_seconds(pid)
    got = result(spawn(BURST, port, user, kind, secret, logins, tries))
    time.sleep(0.3)  # sshd reaps its last children
    return {"first_try": got["tries"].count(1), "within_tries": sum(1 for t in got["tries"] if t),
            "seconds": got["end"] - got["start"], "cpu_ms_per_login": 1000 * (bench_sftp.cpu_seconds(pid) - cpu0) / logins}


def rate_between(samples: list[list[float]], start: float, end: float) -> float:
    """MiB/s of an upload between two instants, from its (time, bytes) samples, linearly interpolated."""
    def done_at(t: float) -> float:
        if t <= samples[0][0]:
            return samples[0][1]
        for (t0, b0), (t1, b1) in itertools.pairwise(samples):
            if t0 <= t <= t1:
                return b0 + (b1 - b0) * (t - t0) / (t1 - t0 or 1)
        return samples[-1][1]

    end = min(end, samples[-1][0])
    return (done_at(end) - done_at(start)) / (1 << 20) / (end - start) if end > start else 0.0


def upload_with_burst(feedd: bench_sftp.Feedd, key: Path, path: Path, name: str, password: str, logins: int, tries: int,
                      lead: float) -> dict[str, float]:
    """One upload, with a password burst starting `lead` seconds into it: its MiB/s before the burst (and
    after, if it outlasts it) against its MiB/s while the burst ran, and feedd's CPU seconds per login."""
    feedd.clear()
    proc = spawn(UPLOAD, feedd.port, "bench", key, path, f"/inbox/{name}")
    time.sleep(lead)
    got = result(spawn(BURST, feedd.port, "bench", "password", password, logins, tries))
    samples = result(proc)
    start, end, done = samples[0][0] + 0.3, samples[-1][0], got["end"]  # 0.3 s: past the upload's ramp-up
    if done >= end:
        print("  the upload ended before the burst did: a bigger --size-mib gives a fairer figure", flush=True)
    alone = [(rate_between(samples, a, b), b - a) for a, b in ((start, got["start"]), (done, end)) if b - a >= 0.5]
    alone_rate = sum(r * t for r, t in alone) / sum(t for _, t in alone) if alone else 0.0
    during = rate_between(samples, got["start"], done)
    return {"alone_mib_s": alone_rate, "during_burst_mib_s": during, "kept": during / alone_rate if alone_rate else 0,
            "first_try": got["tries"].count(1), "within_tries": sum(1 for t in got["tries"] if t),
            "burst_seconds": done - got["start"]}


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logins", type=int, default=100)
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024, help="big enough to outlast the burst")
    ap.add_argument("--lead", type=float, default=1.5, help="seconds of upload before the burst starts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-openssh", action="store_true", help="skip the sshd anchor")
    args = ap.parse_args()
    anchor = not args.no_openssh and Path("/usr/sbin/sshd").exists() and os.geteuid() == 0
    if not args.no_openssh and not anchor:
        print("no sshd anchor: needs /usr/sbin/sshd (Debian: openssh-server) and root", flush=True)
    # sshd's ChrootDirectory wants every folder on the way root-owned and not group/world writable.
    base = Path(os.environ.get("BENCH_DIR", "/var/lib/feedd-bench" if anchor else tempfile.gettempdir()))
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="auth-", dir=base))
    key, pubkey = bench_sftp.client_key(work)
    password = secrets.token_urlsafe(16)
    big = work / "big.bin"
    with open(big, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(1 << 20))
    feedd = start_feedd(work, pubkey, password)
    openssh = bench_sftp.OpenSSH(work, pubkey) if anchor else None
    rows: dict[str, list[dict[str, float]]] = {}
    try:
        for n in range(args.rounds):
            # Rounds alternate between the servers, so a slower spell of the machine weighs on each alike.
            if openssh is not None:
                rows.setdefault("openssh keys", []).append(
                    burst(openssh.pid, openssh.port, openssh.user, "key", str(key), args.logins, args.tries))
            rows.setdefault("feedd keys", []).append(burst(feedd.proc.pid, feedd.port, "bench", "key", str(key), args.logins,
                                                           args.tries))
            rows.setdefault("feedd passwords", []).append(
                burst(feedd.proc.pid, feedd.port, "bench", "password", password, args.logins, args.tries))
            rows.setdefault("upload", []).append(upload_with_burst(feedd, key, big, f"up-{n}.bin", password,
                                                                   args.logins, args.tries, args.lead))
        results = {name: median_of(got) for name, got in rows.items()}
        for name, got in results.items():
            if name == "upload":
                print(f"upload of {args.size_mib} MiB, password burst of {args.logins} {args.lead} s into it: "
                      f"{got['alone_mib_s']} MiB/s without the burst, {got['during_burst_mib_s']} MiB/s while it ran "
                      f"({got['kept']:.0%} kept); the burst: first try {got['first_try']:.0f}, within {args.tries} "
                      f"tries {got['within_tries']:.0f}, {got['burst_seconds']:.1f} s")
            else:
                print(f"{name:30} burst of {args.logins}: first try {got['first_try']:.0f}, within {args.tries} "
                      f"tries {got['within_tries']:.0f}, {got['seconds']:.1f} s, server CPU "
                      f"{got['cpu_ms_per_login']:.1f} ms per login")
        print(json.dumps(results))
    finally:
        feedd.stop()
        if openssh is not None:
            openssh.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
