"""SFTP throughput: feedd against OpenSSH's own server (internal-sftp, chrooted), same client, same files.

    python bench/sftp.py [--size-mib 1024] [--files 1000] [--file-kib 100] [--rounds 3]
                         [--clients openssh,asyncssh,paramiko] [--workloads big,small] [--bare] [--process]
                         [--variants default,asyncio-loop,no-fast-path] [--store-dsn postgresql://...]

Starts OpenSSH's sshd (internal-sftp in a chroot) on one loopback port and `feedd serve` on another,
uploads the same big file and the same set of small files with each client, and prints MiB/s, files/s
and server CPU seconds for both, the ratio feedd/OpenSSH (medians over the rounds, which alternate
between the servers), and feedd's peak RSS. feedd runs with its jail, quota accounting and intake on:
every uploaded file is moved to the spool, fsynced, hashed and recorded as a run before the round ends.
The runs are recorded `held` (the pipeline is inactive), so that what is measured is ingest; with
`--process` they are processed as they arrive, on the same two cores. `--bare` adds asyncssh's own
SFTPServer, nothing added, as the library's ceiling on this machine. `--variants` runs several feedd
servers side by side in the same rounds: `default` (as installed: uvloop and the SFTP fast path),
`asyncio-loop` (FEEDD_EVENT_LOOP=asyncio) and `no-fast-path` (`sftp.fast_path: false`).
Needs /usr/sbin/sshd (Debian: openssh-server) and the OpenSSH sftp client; runs as root for the chroot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh
import paramiko

CIPHER = "aes128-gcm@openssh.com"
CLK = os.sysconf("SC_CLK_TCK")


def client_key(work: Path) -> tuple[Path, str]:
    """A new ed25519 key for the benchmark's clients: its file in `work`, and its public line."""
    key = work / "client_key"
    private = asyncssh.generate_private_key("ssh-ed25519")
    private.write_private_key(str(key))
    key.chmod(0o600)
    return key, private.export_public_key().decode().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its reaped children (sshd's sessions are its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Server:
    name: str
    port: int
    pid: int
    upload_dir: str  # as the client sees it
    local_dir: Path  # where the files land (cleared between rounds)

    def clear(self) -> None:
        raise NotImplementedError

    def spawn(self, cmd: list[str], user: str, upload_dir: str, local_dir: Path,
              env: dict[str, str] | None = None) -> None:
        """Start the server process and wait for its port; `local_dir` is where uploads to `upload_dir` land."""
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})
        self.pid = self.proc.pid
        wait_port(self.port, 60)
        self.user, self.upload_dir, self.local_dir = user, upload_dir, local_dir


class OpenSSH(Server):
    name = "openssh"

    def __init__(self, work: Path, pubkey: str) -> None:
        self.port = free_port()
        root = work / "sshd-chroot"
        (root / "upload").mkdir(parents=True)
        os.chmod(work, 0o755)
        os.chmod(root, 0o755)
        (work / "authorized_keys").write_text(pubkey + "\n")
        host_key = work / "sshd_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        config = work / "sshd_config"
        config.write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {work}/sshd.pid
AuthorizedKeysFile {work}/authorized_keys
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Subsystem sftp internal-sftp
ChrootDirectory {root}
ForceCommand internal-sftp
AllowTcpForwarding no
X11Forwarding no
""")
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        wait_port(self.port)
        self.user = "root"
        self.upload_dir = "/upload"
        self.local_dir = root / "upload"

    def clear(self) -> None:
        for p in self.local_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


VARIANTS = ("default", "asyncio-loop", "no-fast-path", "managed-1000")
MANAGED = 1000  # connections created over the API beside the benchmark's own, for `managed-1000`


class Feedd(Server):
    name = "feedd"

    def __init__(self, work: Path, pubkey: str, process: bool = False, password_hash: str | None = None,
                 variant: str = "default", store_dsn: str | None = None) -> None:
        self.port = free_port()
        self.store_dsn = store_dsn
        self.process = process
        if variant != "default":
            self.name = f"feedd/{variant}"
        password = f'\n    password_hash: "{password_hash}"' if password_hash else ""
        fast_path = "false" if variant == "no-fast-path" else "true"
        state = work / ("feedd-state" if variant == "default" else f"feedd-state-{variant}")
        config = work / "feedd.yaml"
        config.write_text(f"""\
state_dir: {state}
log: {{level: warning, format: json}}
sftp: {{listen: "127.0.0.1:{self.port}", fast_path: {fast_path}}}
http: {{listen: "127.0.0.1:{free_port()}"}}
schemas:
  blob:
    fields:
      x: {{type: string}}
connections:
  bench:{password}
    authorized_keys: ["{pubkey}"]
    quota: 1TiB
    max_file_size: 100GiB
pipelines:
  bench-in:
    connection: bench
    schema: blob
    match: ["inbox/**"]
    skip_duplicates: false
    active: {"true" if process else "false"}
""" + (f'store: {{type: postgresql, dsn: "{store_dsn}"}}\n' if store_dsn else ""))
        env = {"FEEDD_EVENT_LOOP": "asyncio"} if variant == "asyncio-loop" else None
        cmd = [sys.executable, "-m", "feedd", "serve", "-c", str(config)]
        if variant == "managed-1000":
            # Made once, as the API would store them, then served after a restart: what is measured is a
            # daemon with that many connections in force, not the time it took to create them.
            self.spawn(cmd, "bench", "/inbox", state / "spool", env)
            self.stop()
            self._add_managed(state / "feedd.db", pubkey)
        self.spawn(cmd, "bench", "/inbox", state / "spool", env)
        self.db = state / "feedd.db"
        self.inbox = state / "spaces" / "bench" / "inbox"

    @staticmethod
    def _add_managed(db: Path, pubkey: str) -> None:
        import sqlite3

        now = "2026-01-01T00:00:00+00:00"
        body = json.dumps({"authorized_keys": [pubkey], "quota": "1GiB"})
        with sqlite3.connect(db) as conn:
            conn.executemany("INSERT INTO managed_objects VALUES ('connection', ?, ?, 1, ?, ?)",
                             [(f"partner-{i:04d}", body, now, now) for i in range(MANAGED)])

    def runs(self, *statuses: str) -> int:
        if self.store_dsn:
            import psycopg

            with psycopg.connect(self.store_dsn) as pg:
                row = pg.execute("SELECT count(*) FROM runs WHERE %s OR status = ANY(%s)",
                                 (not statuses, list(statuses))).fetchone()
                return int(row[0]) if row else 0
        import sqlite3

        where = f"WHERE status IN ({', '.join('?' * len(statuses))})" if statuses else ""
        with sqlite3.connect(self.db) as conn:
            return int(conn.execute(f"SELECT count(*) FROM runs {where}", statuses).fetchone()[0])  # noqa: S608

    def wait_taken(self, expected: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.runs() < expected and time.monotonic() < deadline:
            time.sleep(0.05)

    def clear(self) -> None:
        # Runs still being processed read their spool files: the next round starts when they are done.
        deadline = time.monotonic() + 600
        while self.runs("queued", "processing") and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in self.local_dir.iterdir() if self.local_dir.exists() else ():
            p.unlink()
        for p in self.inbox.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(40)


BARE_SERVER = """\
import asyncio, sys
import asyncssh
from asyncssh.sftp import MAX_SFTP_PACKET_LEN, MAX_SFTP_READ_LEN, SFTPLimits, SFTPServerHandler

async def limits(self, packet):
    return SFTPLimits(MAX_SFTP_PACKET_LEN, MAX_SFTP_READ_LEN, 261120, 64)

SFTPServerHandler._packet_handlers[b"limits@openssh.com"] = limits
port, root, pubkey, host_key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

async def main():
    await asyncssh.create_server(None, "127.0.0.1", port, server_host_keys=[host_key],
                                 authorized_client_keys=asyncssh.import_authorized_keys(pubkey),
                                 sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root.encode()),
                                 allow_scp=False, max_pktsize=256 * 1024)
    await asyncio.Event().wait()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


class Bare(Server):
    """asyncssh's own SFTPServer with its lexical chroot and nothing else: the library's ceiling here.
    Configured as feedd configures asyncssh: 255 KiB writes advertised, 256 KiB channel packets."""

    name = "asyncssh"

    def __init__(self, work: Path, pubkey: str) -> None:
        self.port = free_port()
        root = work / "bare-root"
        (root / "upload").mkdir(parents=True)
        script = work / "bare_server.py"
        script.write_text(BARE_SERVER)
        host_key = work / "sshd_host_ed25519_key"
        self.spawn([sys.executable, str(script), str(self.port), str(root), pubkey, str(host_key)],
                   "bench", "/upload", root / "upload")

    def clear(self) -> None:
        for p in self.local_dir.iterdir():
            p.unlink()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- clients: each uploads `paths` into server.upload_dir ------------------------------------------------


def openssh_client(server: Server, key: Path, paths: list[Path], work: Path) -> None:
    batch = work / "batch.txt"
    lines = [f"cd {server.upload_dir}"]
    if len(paths) == 1:
        lines.append(f"put {paths[0]}")
    else:
        lines.append(f"put {paths[0].parent}/*")
    batch.write_text("\n".join(lines) + "\n")
    subprocess.run(["sftp", "-q", "-b", str(batch), "-P", str(server.port), "-i", str(key),
                    "-o", f"Ciphers={CIPHER}", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
                    f"{server.user}@127.0.0.1"], check=True, stdout=subprocess.DEVNULL)


def asyncssh_client(server: Server, key: Path, paths: list[Path], work: Path) -> None:
    async def run() -> None:
        async with asyncssh.connect("127.0.0.1", server.port, username=server.user, client_keys=[str(key)],
                                    known_hosts=None, encryption_algs=[CIPHER]) as conn:
            async with conn.start_sftp_client() as sftp:
                for p in paths:
                    await sftp.put(str(p), f"{server.upload_dir}/{p.name}")

    asyncio.run(run())


def paramiko_client(server: Server, key: Path, paths: list[Path], work: Path) -> None:
    transport = paramiko.Transport(("127.0.0.1", server.port))
    transport.get_security_options().ciphers = ("aes128-gcm@openssh.com", "aes128-ctr")
    try:
        transport.connect(username=server.user, pkey=paramiko.Ed25519Key.from_private_key_file(str(key)))
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        for p in paths:
            sftp.put(str(p), f"{server.upload_dir}/{p.name}", confirm=False)
    finally:
        transport.close()


CLIENTS: dict[str, Callable[[Server, Path, list[Path], Path], None]] = {
    "openssh": openssh_client, "asyncssh": asyncssh_client, "paramiko": paramiko_client,
}


def measure(server: Server, client: str, key: Path, paths: list[Path], work: Path) -> tuple[float, float, float]:
    """Seconds until the client is done, seconds until every file is recorded as a run (feedd; for OpenSSH
    the same as the first), and server CPU seconds."""
    server.clear()
    os.sync()  # every round starts with no dirty pages left by the one before (feedd fsyncs, sshd does not)
    time.sleep(0.5)
    before_runs = server.runs() if isinstance(server, Feedd) else 0
    cpu0 = cpu_seconds(server.pid)
    t0 = time.perf_counter()
    CLIENTS[client](server, key, paths, work)
    client_done = time.perf_counter() - t0
    if isinstance(server, Feedd):
        server.wait_taken(before_runs + len(paths))
    recorded = time.perf_counter() - t0
    time.sleep(0.3)
    return client_done, recorded, cpu_seconds(server.pid) - cpu0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--file-kib", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="openssh,asyncssh,paramiko")
    ap.add_argument("--workloads", default="big,small")
    ap.add_argument("--process", action="store_true",
                    help="process every upload with the pipeline as it arrives (default: runs are recorded held)")
    ap.add_argument("--bare", action="store_true",
                    help="also measure asyncssh's own SFTPServer with nothing added (the library's ceiling)")
    ap.add_argument("--store-dsn", default=None,
                    help="run feedd on this PostgreSQL database (a fresh one: runs are counted there) instead of SQLite")
    ap.add_argument("--variants", default="default",
                    help=f"feedd servers measured side by side, of {', '.join(VARIANTS)} (default: %(default)s)")
    args = ap.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        ap.error(f"unknown variant(s) {', '.join(sorted(unknown))}: choose from {', '.join(VARIANTS)}")
    if not Path("/usr/sbin/sshd").exists() or shutil.which("sftp") is None:
        print("needs /usr/sbin/sshd and sftp (Debian: apt-get install openssh-server openssh-client)")
        return 2
    # sshd's ChrootDirectory wants every folder on the way root-owned and not group/world writable:
    # /tmp and /var/tmp are not, /var/lib is.
    base = Path(os.environ.get("BENCH_DIR", "/var/lib/feedd-bench"))
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    key, pubkey = client_key(work)
    big = work / "data" / "big" / "big.bin"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(1024 * 1024))
    small_dir = work / "data" / "small"
    small_dir.mkdir()
    smalls = []
    for i in range(args.files):
        p = small_dir / f"f{i:05d}.csv"
        p.write_bytes(os.urandom(args.file_kib * 1024))
        smalls.append(p)
    feedds = [Feedd(work, pubkey, process=args.process, variant=v, store_dsn=args.store_dsn) for v in variants]
    servers: list[Server] = [OpenSSH(work, pubkey), *feedds]
    if args.bare:
        servers.append(Bare(work, pubkey))
    results: dict[str, dict[str, object]] = {}
    try:
        for client in args.clients.split(","):
            for workload, paths, unit in (("big", [big], "MiB/s"), ("small", smalls, "files/s")):
                if workload not in args.workloads.split(","):
                    continue
                row: dict[str, object] = {}
                # Rounds alternate between the servers, so that a slower spell of the machine weighs on
                # each of them alike.
                samples: dict[str, list[tuple[float, float, float]]] = {server.name: [] for server in servers}
                for _ in range(args.rounds):
                    for server in servers:
                        samples[server.name].append(measure(server, client, key, paths, work))
                amount = args.size_mib if workload == "big" else args.files
                for name, got in samples.items():
                    t = statistics.median(g[0] for g in got)
                    row[name] = {"rate": round(amount / t, 1), "seconds": round(t, 2),
                                 "recorded_rate": round(amount / statistics.median(g[1] for g in got), 1),
                                 "server_cpu_s": round(statistics.median(g[2] for g in got), 2)}
                openssh_rate = row["openssh"]["rate"]  # type: ignore[index]
                row["unit"] = unit
                results[f"{client}/{workload}"] = row
                bare = ""
                if "asyncssh" in row:
                    b = row["asyncssh"]
                    bare = f"  bare asyncssh {b['rate']} {unit} ({b['rate'] / openssh_rate:.2f}x, CPU s {b['server_cpu_s']})"  # type: ignore[index,operator]
                for feedd in feedds:
                    f = row[feedd.name]
                    feedd_rate = f["rate"]  # type: ignore[index]
                    f["ratio"] = round(feedd_rate / openssh_rate, 3)  # type: ignore[index]
                    print(f"{client:9} {workload:5}  openssh {openssh_rate:8.1f} {unit:7}  {feedd.name} {feedd_rate:8.1f}"
                          f" {unit:7}  ratio {f['ratio']:.2f}  (incl. intake {f['recorded_rate']} {unit})"  # type: ignore[index]
                          f"  server CPU s: openssh {row['openssh']['server_cpu_s']} {feedd.name} {f['server_cpu_s']}"  # type: ignore[index]
                          f"{bare if feedd is feedds[0] else ''}", flush=True)
        for feedd in feedds:
            peak = peak_rss_mib(feedd.pid)
            print(f"{feedd.name} peak RSS: {peak:.0f} MiB")
            results[f"{feedd.name}_peak_rss_mib"] = {"value": round(peak)}
        print(json.dumps(results))
    finally:
        for server in servers:
            server.stop()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
