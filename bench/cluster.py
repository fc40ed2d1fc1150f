"""Several nodes: small-file SFTP ingest through HAProxy to one and to three feedd nodes on one PostgreSQL
store and one shared directory, and the time the others take to take over a node killed with SIGKILL.

    python bench/cluster.py [--files 300] [--file-kib 10] [--clients 3] [--rounds 3] [--kills 3]

Each round uploads the same small files with `--clients` OpenSSH `sftp` clients at once (each its share),
through HAProxy (TCP, PROXY protocol v2) in front of one node, then in front of three, and times until every
file is recorded as a run (intake, as bench/sftp.py measures it: runs recorded `held`). On one machine the
nodes share its cores, so three cannot be faster than one here: the figure says what the coordination costs,
not how it scales. Then, `--kills` times: a node is killed with SIGKILL while idle, and the time until a
surviving node has taken over (it logs `cluster.took_over`) is measured against `cluster.takeover_after`.
Needs Debian's postgresql (15), haproxy and openssh-client; runs as root (PostgreSQL runs as `postgres`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pg import count_runs, postgres
from sftp import client_key, free_port, peak_rss_mib, wait_port

TAKEOVER = 5.0  # cluster.takeover_after for the kill measurement, seconds
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def config(work: Path, dsn: str, pubkey: str) -> Path:
    path = work / "feedd.yaml"
    path.write_text(f"""\
state_dir: {work}/state
log: {{level: info, format: json}}
store: {{type: postgresql, dsn: "{dsn}"}}
cluster: {{takeover_after: {TAKEOVER}s}}
sftp: {{listen: "127.0.0.1:0", proxy_protocol: true}}
http: {{listen: "127.0.0.1:0"}}
schemas: {{blob: {{fields: {{x: {{type: string}}}}}}}}
connections:
  bench: {{authorized_keys: ["{pubkey}"], quota: 1TiB}}
pipelines:
  bench-in: {{connection: bench, schema: blob, match: ["inbox/**"], skip_duplicates: false, active: false}}
""")
    return path


class Node:
    """`feedd serve` with its JSON log read on a thread."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "feedd", "serve", "-c", str(path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines: list[dict[str, object]] = []
        self.seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            with self.seen:
                self.lines.append(entry)
                self.seen.notify_all()

    def wait_log(self, event: str, timeout: float, **match: object) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        with self.seen:
            while True:
                for entry in self.lines:
                    if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no {event} within {timeout}s")
                self.seen.wait(left)

    def sftp_port(self) -> int:
        return int(str(self.wait_log("listening", 60, service="sftp")["address"]).rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(40)


class Balancer:
    def __init__(self, work: Path, targets: list[int]) -> None:
        self.port = free_port()
        servers = "\n".join(f"    server n{i} 127.0.0.1:{t} send-proxy-v2" for i, t in enumerate(targets))
        path = work / f"haproxy-{self.port}.cfg"
        path.write_text(f"""\
global
    maxconn 500
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    option redispatch
    retries 3
frontend front
    bind 127.0.0.1:{self.port}
    default_backend nodes
backend nodes
    balance roundrobin
{servers}
""")
        self.proc = subprocess.Popen([HAPROXY, "-f", str(path), "-db"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def upload(port: int, key: Path, folder: Path, work: Path) -> None:
    batch = work / f"{folder.name}.batch"
    batch.write_text(f"cd /inbox\nput {folder}/*\n")
    subprocess.run(["sftp", "-q", "-b", str(batch), "-P", str(port), "-i", str(key),
                    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                    "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "bench@127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL)


def ingest(port: int, dsn: str, key: Path, folders: list[Path], work: Path, files: int) -> float:
    """Seconds until every file the clients upload at once is recorded as a run."""
    before = count_runs(dsn)
    started = time.perf_counter()
    clients = [threading.Thread(target=upload, args=(port, key, f, work)) for f in folders]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    deadline = time.monotonic() + 300
    while count_runs(dsn) < before + files and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--file-kib", type=int, default=10)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kills", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="feedd-bench-cluster-"))
    nodes: list[Node] = []
    balancers: list[Balancer] = []
    try:
        with postgres() as dsn:
            key, pubkey = client_key(work)
            folders = []
            for c in range(args.clients):
                folder = work / "data" / f"c{c}"
                folder.mkdir(parents=True)
                for i in range(c, args.files, args.clients):
                    (folder / f"f{i:05d}.csv").write_bytes(os.urandom(args.file_kib * 1024))
                folders.append(folder)
            path = config(work, dsn, pubkey)
            nodes.append(Node(path))  # the first node alone: it records the host key the others then find
            nodes[0].wait_log("ready", 60)
            nodes += [Node(path), Node(path)]
            for node in nodes:
                node.wait_log("ready", 60)
            ports = [n.sftp_port() for n in nodes]
            one, three = Balancer(work, ports[:1]), Balancer(work, ports)
            balancers += [one, three]
            times: dict[str, list[float]] = {"1 node": [], "3 nodes": []}
            for _ in range(args.rounds):  # alternated, so that a slow spell of the machine weighs on both
                for name, balancer in (("1 node", one), ("3 nodes", three)):
                    for spooled in (work / "state" / "spaces" / "bench" / "inbox",):
                        shutil.rmtree(spooled, ignore_errors=True)
                        spooled.mkdir(parents=True, exist_ok=True)
                    times[name].append(ingest(balancer.port, dsn, key, folders, work, args.files))
            rates = {name: args.files / statistics.median(t) for name, t in times.items()}
            for name, rate in rates.items():
                print(f"{name:8} through HAProxy, {args.clients} OpenSSH clients: {rate:7.1f} files/s recorded")
            print(f"3 nodes / 1 node: {rates['3 nodes'] / rates['1 node']:.2f}x (one machine, two cores: it cannot "
                  f"scale here)")
            print(f"peak RSS per node: {', '.join(f'{peak_rss_mib(n.proc.pid):.0f} MiB' for n in nodes)}")
            takeovers = []
            for _ in range(min(args.kills, len(nodes) - 1)):
                victim, survivors = nodes[-1], nodes[:-1]
                for n in survivors:  # only what is logged after the kill counts
                    with n.seen:
                        n.lines.clear()
                victim.proc.kill()
                victim.proc.wait()
                killed = time.monotonic()
                nodes.pop()
                took = _took(survivors, killed)
                takeovers.append(took)
                print(f"takeover after kill -9: {took:.1f} s (takeover_after {TAKEOVER:.0f} s)")
                nodes.append(Node(path))  # back to as many nodes for the next kill
                nodes[-1].wait_log("ready", 60)
            if takeovers:
                print(f"takeover median: {statistics.median(takeovers):.1f} s")
    finally:
        for b in balancers:
            b.stop()
        for n in nodes:
            n.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _took(survivors: list[Node], killed: float) -> float:
    """Seconds from the kill until one of the survivors logged that it took the dead node's work over."""
    deadline = killed + 6 * TAKEOVER
    while time.monotonic() < deadline:
        for node in survivors:
            with node.seen:
                if any(e.get("event") == "cluster.took_over" for e in node.lines):
                    return time.monotonic() - killed
        time.sleep(0.02)
    return float("inf")


if __name__ == "__main__":
    sys.exit(main())
