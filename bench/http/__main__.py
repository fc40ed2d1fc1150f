"""Side-port throughput: outbound multipart uploads into feedd against a bare aiohttp floor.

    python bench/http [--parts 10] [--records 10000] [--clients 4] [--rounds 3]

(a) end to end: one upload of `--parts` x `--records` records, from init to `delivered` (the CSV in the
partner's outbox), in records/s; (b) part ingest alone: `--clients` concurrent clients PUT parts of that
size, records/s; (c) the floor for (b): the same bytes PUT with the same concurrency to a bare aiohttp
handler that parses each body with orjson and writes it to disk. Fastest of `--rounds` rounds each.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

KEY = "bench-key-0123456789"
CONFIG = f"""\
state_dir: ./var
log: {{level: warning, format: json}}
sftp: {{listen: "127.0.0.1:0"}}
http:
  listen: "127.0.0.1:@port@"
  api_keys: [{{name: bench, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"}}]
schemas:
  order:
    fields:
      order_id: {{type: string, required: true, unique: true}}
      customer: {{type: email, required: true}}
      amount:   {{type: decimal, min: 0}}
      placed:   {{type: date}}
      status:   {{type: enum, values: [open, paid, shipped]}}
      note:     {{type: string, max_length: 200}}
connections:
  bench: {{password_hash: "$argon2id$v=19$m=19456,t=2,p=1$r32hUGwXnLSq8lBLen9Gpg$MVU5SZl/SCrA7wC8teLjH3SdPj3zaiZMnl77Jte5phk"}}
pipelines:
  bench-out: {{connection: bench, schema: order, direction: outbound, output: {{format: csv}}}}
"""

FLOOR = """
import sys, os, orjson
from aiohttp import web
folder = sys.argv[2]
async def put(request):
    body = await request.read()
    records = orjson.loads(body)
    with open(os.path.join(folder, request.match_info["n"]), "wb") as f:
        f.write(body)
    return web.json_response({"records": len(records)})
app = web.Application(client_max_size=1 << 30)
app.router.add_put("/parts/{n}", put)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_part(start: int, count: int) -> bytes:
    return json.dumps([{"order_id": f"O{i:08d}", "customer": f"c{i % 5000}@example.org", "amount": f"{i % 997}.25",
                        "placed": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}", "status": ("open", "paid", "shipped")[i % 3],
                        "note": f"order number {i}, \"quoted\""} for i in range(start, start + count)]).encode()


async def wait_http(url: str) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def put_all(session: aiohttp.ClientSession, urls: list[str], parts: list[bytes], clients: int,
                  headers: dict[str, str]) -> float:
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for url, body in zip(urls, parts, strict=True):
        queue.put_nowait((url, body))

    async def worker() -> None:
        while not queue.empty():
            url, body = queue.get_nowait()
            async with session.put(url, data=body, headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"PUT {url}: {r.status} {await r.text()}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - t0


async def feedd_rounds(base: str, parts: list[bytes], records: int, clients: int, rounds: int) -> tuple[float, float]:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    best_e2e = best_ingest = float("inf")
    async with aiohttp.ClientSession() as s:
        for _ in range(rounds):
            t0 = time.perf_counter()
            async with s.post(f"{base}/outbound/uploads", json={"connectionName": "bench", "pipelineId": "bench-out",
                                                                 "totalParts": len(parts)}, headers=auth) as r:
                uid = (await r.json())["uploadId"]
            urls = [f"{base}/outbound/uploads/{uid}/parts/{n}" for n in range(1, len(parts) + 1)]
            await put_all(s, urls, parts, 1, auth)
            async with s.post(f"{base}/outbound/uploads/{uid}/complete",
                              json={"parts": [{"partNumber": n} for n in range(1, len(parts) + 1)]}, headers=auth) as r:
                run_id = (await r.json())["runId"]
            while True:
                async with s.get(f"{base}/runs/{run_id}", headers=auth) as r:
                    run = await r.json()
                if run["status"] in ("delivered", "failed"):
                    break
                await asyncio.sleep(0.02)
            if run["status"] != "delivered" or run["counts"]["valid"] != records:
                raise RuntimeError(f"the bench run did not deliver every record: {run}")
            best_e2e = min(best_e2e, time.perf_counter() - t0)
            # ingest alone: the same parts, `clients` at a time, into a fresh upload
            async with s.post(f"{base}/outbound/uploads", json={"connectionName": "bench", "pipelineId": "bench-out",
                                                                 "totalParts": len(parts)}, headers=auth) as r:
                uid = (await r.json())["uploadId"]
            urls = [f"{base}/outbound/uploads/{uid}/parts/{n}" for n in range(1, len(parts) + 1)]
            best_ingest = min(best_ingest, await put_all(s, urls, parts, clients, auth))
            async with s.post(f"{base}/outbound/uploads/{uid}/abort", headers=auth):
                pass
    return best_e2e, best_ingest


async def floor_rounds(base: str, parts: list[bytes], clients: int, rounds: int) -> float:
    best = float("inf")
    async with aiohttp.ClientSession() as s:
        for _ in range(rounds):
            urls = [f"{base}/parts/{n}" for n in range(1, len(parts) + 1)]
            best = min(best, await put_all(s, urls, parts, clients, {"Content-Type": "application/json"}))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=10)
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="feedd-http-bench-"))
    parts = [make_part(n * args.records, args.records) for n in range(args.parts)]
    total = args.parts * args.records
    mib = sum(map(len, parts)) / 2**20
    port = free_port()
    (work / "feedd.yaml").write_text(CONFIG.replace("@port@", str(port)))
    daemon = subprocess.Popen([sys.executable, "-m", "feedd", "serve", "-c", str(work / "feedd.yaml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    floor_port = free_port()
    (work / "floor").mkdir()
    floor = subprocess.Popen([sys.executable, "-c", FLOOR, str(floor_port), str(work / "floor")])
    try:
        asyncio.run(wait_http(f"http://127.0.0.1:{port}/healthz"))
        asyncio.run(wait_http(f"http://127.0.0.1:{floor_port}/"))
        e2e, ingest = asyncio.run(feedd_rounds(f"http://127.0.0.1:{port}", parts, total, args.clients, args.rounds))
        floor_s = asyncio.run(floor_rounds(f"http://127.0.0.1:{floor_port}", parts, args.clients, args.rounds))
    finally:
        for proc in (daemon, floor):
            proc.terminate()
            proc.wait(30)
    print(f"{args.parts} parts x {args.records:,} records ({mib:.0f} MiB), {args.clients} concurrent clients for ingest")
    print(f"floor ingest      {total / floor_s:12,.0f} records/s")
    print(f"feedd ingest      {total / ingest:12,.0f} records/s   {floor_s / ingest:5.2f}x floor")
    print(f"feedd end to end  {total / e2e:12,.0f} records/s   (init -> parts -> complete -> delivered)")
    print(json.dumps({"floor_ingest": round(total / floor_s), "feedd_ingest": round(total / ingest),
                      "ratio": round(floor_s / ingest, 2), "end_to_end": round(total / e2e)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
