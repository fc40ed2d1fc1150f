"""The console's pages over a store with many runs: how long each takes to render, server-side.

    python bench/console.py [--runs 100000] [--connections 20] [--rounds 30] [--drops 20] [--load 300]
                            [--consoles 5]

Fills a fresh store with `--runs` runs (spread over 30 days, `--connections` connections, mixed statuses,
a few with failed deliveries), starts the HTTP app with the console in this process, logs in, and times
each page `--rounds` times: the time from the request's arrival to its answer, measured inside the app by
a middleware (so the client's own work does not count). Prints the median and the worst per page. The goal
for the runs list is under 100 ms at 100,000 runs: every page reads the store through bounded queries.

Then, with `--drops` and Playwright and Debian's chromium at hand, the time from an SFTP drop (the
client's close of the file) to the run showing on the overview in a real browser, which refreshes its
table twice a second: a full daemon in this process, a fresh state, one file at a time. Last, it uploads
`--load` small files over one SFTP session, then a file of `--rows` rows to be processed, three times with
`--consoles` overview pages open in chromium, three times with only their requests (no browser), and three
times with none (alternating), and prints the upload and processing rates of each.
It prints figures; it gates nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web
from yarl import URL

from feedd.config import load_config
from feedd.console.sessions import Sessions
from feedd.credentials import hash_password
from feedd.http.app import build_app
from feedd.model import (
    Counts,
    Delivery,
    DeliveryStatus,
    Direction,
    Run,
    RunStatus,
    Source,
    SourceKind,
    id_floor,
)
from feedd.store import RunQuery
from feedd.store.sqlite import _DELIVERY_COLUMNS, _ROWS, _RUN_COLUMNS, SqliteStore

PASSWORD = "bench-password"  # noqa: S105 - the benchmark's own throwaway operator
STATUSES = [RunStatus.DELIVERED] * 14 + [RunStatus.COMPLETED] * 3 + [RunStatus.FAILED] * 2 + [RunStatus.HELD]


def config_text(connections: int) -> str:
    conns = "\n".join(f"  c{i:02d}: {{password_hash: \"{HASH}\"}}" for i in range(connections))
    return (f"state_dir: ./var\nlog: {{level: warning, format: json}}\n"
            f"sftp: {{listen: \"127.0.0.1:0\"}}\n"
            f"http:\n  listen: \"127.0.0.1:0\"\n  operators:\n"
            f"    - {{name: bench, password_hash: \"{HASH}\", role: admin}}\n"
            f"schemas:\n  s: {{fields: {{email: {{type: email}}}}}}\n"
            f"connections:\n{conns}\n")


HASH = ""


def fill(db: Path, runs: int, connections: int) -> str:
    """Writes the runs straight into the database (the store's own row format); returns one run id."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    start = now - timedelta(days=30)
    step = (now - start) / runs
    conn = sqlite3.connect(db)
    columns = len(_ROWS.run_row(_run("0" * 26, "c00", RunStatus.QUEUED, now)))
    some = ""
    with conn:
        for i in range(runs):
            at = start + step * i
            rid = id_floor(at)[:10] + f"{i:016d}"
            status = rng.choice(STATUSES)
            run = _run(rid, f"c{rng.randrange(connections):02d}", status, at)
            marks = ", ".join("?" * columns)
            conn.execute(f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({marks})", _ROWS.run_row(run))  # noqa: S608
            if status is RunStatus.COMPLETED and rng.random() < 0.3:
                conn.execute(f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                             _ROWS.delivery_row(Delivery(
                    rid, "webhook:x", DeliveryStatus.FAILED, 8, "HTTP 503")))
            some = rid
    conn.close()
    return some


def _run(rid: str, connection: str, status: RunStatus, at: datetime) -> Run:
    return Run(rid, "p", connection, Direction.INBOUND, status,
               Source(SourceKind.SFTP, f"inbox/orders-{rid[-6:]}.csv", 12345, "0" * 64), "/nonexistent",
               counts=Counts(100, 98, 2), mapping={"email": "E-mail"}, created_at=at, started_at=at,
               finished_at=at)


async def main() -> None:
    global HASH
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--load", type=int, default=300, help="files per round for uploads with consoles open")
    parser.add_argument("--consoles", type=int, default=5, help="overview pages open at once")
    parser.add_argument("--rows", type=int, default=100_000,
                        help="rows of the file processed per round with consoles open and without")
    args = parser.parse_args()
    HASH = hash_password(PASSWORD)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "feedd.yaml").write_text(config_text(args.connections))
        config = load_config(root / "feedd.yaml", env={})
        config.state_dir.mkdir(parents=True)
        store = await SqliteStore.open(config.state_dir / "bench.db")
        await store.close()
        started = time.monotonic()
        some = fill(config.state_dir / "bench.db", args.runs, args.connections)
        print(f"{args.runs} runs written in {time.monotonic() - started:.1f} s")
        store = await SqliteStore.open(config.state_dir / "bench.db")
        timings: dict[str, list[float]] = {}
        lookups: list[float] = []

        @web.middleware
        async def timed(request: web.Request, handler: Any) -> web.StreamResponse:
            t0 = time.perf_counter()
            try:
                return await handler(request)
            finally:
                timings.setdefault(request.path_qs, []).append(time.perf_counter() - t0)

        app = build_app(config, store)
        app.middlewares.insert(0, timed)  # type: ignore[attr-defined]
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        day = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d")
        pages = ["/ui/runs", "/ui/runs?status=failed", "/ui/runs?connection=c03",
                 "/ui/runs?connection=c03&status=completed", f"/ui/runs?from={day}&to={day}",
                 f"/ui/runs?from={day}&to={day}&name=orders-0001", "/ui/", "/ui/overview/table",
                 f"/ui/runs/{some}", "/ui/connections/c03", "/ui/pipelines", "/ui/audit"]
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # an IP host
                async with http.get(f"{url}/ui/login") as r:
                    text = await r.text()
                csrf = text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
                async with http.post(f"{url}/ui/login", data={"csrf": csrf, "name": "bench", "password": PASSWORD,
                                                              "next": "/ui/"}) as r:
                    assert r.status == 200, r.status
                timings.clear()
                for _ in range(args.rounds):
                    for page in pages:
                        async with http.get(url + page) as r:
                            assert r.status == 200, (page, r.status, await r.text())
                            await r.read()
                # What every page pays first: the session's check, a lookup in the store.
                token = http.cookie_jar.filter_cookies(URL(f"{url}/ui/"))["feedd_session"].value
                sessions = Sessions(store)
                for _ in range(args.rounds * 10):
                    t0 = time.perf_counter()
                    assert await sessions.get(token) is not None
                    lookups.append(time.perf_counter() - t0)
        finally:
            await runner.cleanup()
            await store.close()
        print(f"{'page':58} {'median ms':>10} {'worst ms':>9}")
        for page in pages:
            t = timings[page]
            print(f"{page:58} {statistics.median(t) * 1000:10.1f} {max(t) * 1000:9.1f}")
        print(f"{'(the session check alone, in every page above)':58} {statistics.median(lookups) * 1000:10.2f} "
              f"{max(lookups) * 1000:9.2f}")
    if args.drops:
        await drop_to_overview(args.drops, args.load, args.consoles, args.rows)


async def drop_to_overview(drops: int, load: int, consoles: int, rows: int = 100_000) -> None:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        print("drop to overview: skipped (pip install playwright)")
        return
    chromium = shutil.which("chromium")
    if chromium is None:
        print("drop to overview: skipped (apt-get install chromium)")
        return
    import asyncssh

    from feedd.daemon import Daemon

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "feedd.yaml").write_text(
            config_text(1) + "pipelines:\n  p: {connection: c00, schema: s, match: ['inbox/*.csv']}\n")
        daemon = Daemon(load_config(root / "feedd.yaml", env={}), drain_seconds=2, workers=1)
        await daemon.start()
        assert daemon.http is not None
        assert daemon.sftp is not None
        url = f"http://127.0.0.1:{daemon.http.addresses[0].port}"
        seen: list[float] = []
        stored: list[float] = []
        try:
            async with async_playwright() as p, asyncssh.connect(
                    "127.0.0.1", daemon.sftp.addresses[0].port, username="c00", password=PASSWORD, known_hosts=None,
                    client_keys=None) as ssh, ssh.start_sftp_client() as sftp:
                browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = await browser.new_page()
                await page.goto(f"{url}/ui/login")
                await page.fill("#name", "bench")
                await page.fill("#password", PASSWORD)
                await page.click("button[type=submit]")
                await page.wait_for_selector("tr[data-connection=c00]")
                for i in range(drops):
                    # at a random moment of the page's refresh cycle, as a partner's drop would come
                    await asyncio.sleep(random.random())
                    async with sftp.open(f"/inbox/d{i}.csv", "wb") as f:
                        await f.write(b"email\nann@example.org\n")
                    closed = time.monotonic()
                    assert daemon.store is not None
                    for _ in range(3000):
                        if len((await daemon.store.list_runs(RunQuery(limit=drops + 1)))[0]) > i:
                            break
                        await asyncio.sleep(0.005)
                    stored.append(time.monotonic() - closed)
                    # The page's own DOM read every 10 ms (Playwright's wait_for_selector notices a changed
                    # attribute only some hundreds of ms late in headless chromium).
                    for _ in range(3000):
                        shown = await page.evaluate(
                            "document.querySelector('tr[data-connection=c00]').dataset.runs")
                        if shown == str(i + 1):
                            break
                        await asyncio.sleep(0.01)
                    seen.append(time.monotonic() - closed)
                # Uploads with and without consoles open: does the page's refresh slow SFTP down?
                rates: dict[str, list[float]] = {"closed": [], "open": [], "polled": []}
                processed: dict[str, list[float]] = {"closed": [], "open": [], "polled": []}
                big = b"email\n" + b"".join(f"user{k}@example.org\n".encode() for k in range(rows))
                pages = [page] + [await browser.new_page() for _ in range(consoles - 1)]
                cookie = next(c["value"] for c in await page.context.cookies() if c["name"] == "feedd_session")
                states = ("closed", "open", "polled")
                for round_ in range(3):
                    for state in states[round_ % 3:] + states[:round_ % 3]:
                        for pg in pages:
                            await pg.goto(f"{url}/ui/" if state == "open" else "about:blank")
                        # "polled": the same requests as open pages make, without a browser's own CPU
                        pollers = [asyncio.create_task(poll(f"{url}/ui/overview/table", cookie))
                                   for _ in range(consoles if state == "polled" else 0)]
                        started = time.monotonic()
                        for k in range(load):
                            async with sftp.open(f"/inbox/load-{round_}-{state}-{k}.csv", "wb") as f:
                                await f.write(b"email\n" + f"ann{k}@example.org\n".encode() * 500)
                        rates[state].append(load / (time.monotonic() - started))
                        # ... and the pipeline: a file of `rows` rows, from its drop to its run completed
                        assert daemon.store is not None
                        name = f"/inbox/big-{round_}-{state}.csv"
                        async with sftp.open(name, "wb") as f:  # its own content: not a duplicate
                            await f.write(big + f"{round_}.{state}@example.org\n".encode())
                        started = time.monotonic()
                        for _ in range(6000):
                            done, _ = await daemon.store.list_runs(RunQuery(
                                statuses=(RunStatus.COMPLETED, RunStatus.FAILED), name=name.rsplit("/", 1)[1]))
                            if done:
                                break
                            await asyncio.sleep(0.01)
                        processed[state].append(rows / (time.monotonic() - started))
                        for task in pollers:
                            task.cancel()
                        await asyncio.gather(*pollers, return_exceptions=True)
                await browser.close()
        finally:
            await daemon.stop()
        seen.sort()
        print(f"drop to a run in the store: median {statistics.median(stored) * 1000:.0f} ms")
        print(f"SFTP uploads of {load} x 8 KiB, median of 3 rounds: "
              f"{statistics.median(rates['closed']):.0f} files/s with no console open, "
              f"{statistics.median(rates['open']):.0f} files/s with {consoles} overviews open in chromium (which "
              f"shares the cores), {statistics.median(rates['polled']):.0f} files/s with their requests alone")
        print(f"pipeline, a {rows}-row file from drop to completed, median of 3 rounds: "
              f"{statistics.median(processed['closed']):.0f} rows/s with no console open, "
              f"{statistics.median(processed['open']):.0f} rows/s with {consoles} overviews open in chromium, "
              f"{statistics.median(processed['polled']):.0f} rows/s with their requests alone")

        print(f"drop to overview in a browser ({drops} drops): median {statistics.median(seen) * 1000:.0f} ms, "
              f"p90 {seen[int(len(seen) * 0.9) - 1] * 1000:.0f} ms, worst {seen[-1] * 1000:.0f} ms")


async def poll(url: str, cookie: str) -> None:
    """What an open overview asks for: its table every 500 ms."""
    async with aiohttp.ClientSession(headers={"Cookie": f"feedd_session={cookie}"}) as http:
        while True:
            async with http.get(url) as r:
                await r.read()
            await asyncio.sleep(0.5)


if __name__ == "__main__":
    asyncio.run(main())
