"""`feedd` sub-commands: parse arguments and call into the package; no logic of its own."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from typing import Any

DEFAULT_CONFIG = "/etc/feedd/feedd.yaml"
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool that a closed pipe ended


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=os.environ.get("FEEDD_CONFIG", DEFAULT_CONFIG),
                   help="config file (default: $FEEDD_CONFIG, else %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedd", description="Self-hosted SFTP ingestion daemon.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _config_arg(sub.add_parser("serve", help="run the daemon (SFTP + side API)"))
    _config_arg(sub.add_parser("check", help="validate the config and print a summary"))
    sub.add_parser("passwd", help="read a password (prompt or stdin) and print its argon2id hash")
    sub.add_parser("apikey", help="print a new API key and the sha256 the config stores")
    tr = sub.add_parser("try", help="run one file through a pipeline locally; print counts, mapping, errors")
    _config_arg(tr)
    tr.add_argument("--pipeline", required=True, help="pipeline name")
    tr.add_argument("file", help="the input file")
    hk = sub.add_parser("hostkey", help="print the SFTP host key fingerprints (made on first use)")
    _config_arg(hk)
    hk.add_argument("--generate", action="store_true", help="replace the host keys with new ones")
    _config_arg(sub.add_parser("migrate", help="create or upgrade the database schema (also done at start)"))
    push = sub.add_parser("push", help="upload a JSONL or JSON array file to an outbound pipeline")
    _api_args(push)
    push.add_argument("--connection", required=True)
    push.add_argument("--pipeline", required=True)
    push.add_argument("--part-size", type=int, default=10_000, help="records per part (default %(default)s)")
    push.add_argument("--filename", help="name of the file the partner gets (default: the pipeline's template)")
    push.add_argument("--wait", action="store_true", help="wait for the run and exit 1 if it fails")
    push.add_argument("file")
    runs = sub.add_parser("runs", help="list, show, acknowledge or retry runs over the side API")
    runs_sub = runs.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = runs_sub.add_parser("list", help="newest runs first")
    _api_args(ls)
    for name in ("connection", "pipeline", "status"):
        ls.add_argument(f"--{name}")
    ls.add_argument("--unacknowledged", action="store_true")
    ls.add_argument("--delivery-failed", action="store_true", help="only runs with a delivery that failed for good")
    ls.add_argument("--limit", type=int, default=20)
    for action, text in (("show", "one run as JSON"), ("ack", "mark a run acknowledged"),
                         ("retry", "re-deliver what failed (--reprocess: process the input again)")):
        p = runs_sub.add_parser(action, help=text)
        _api_args(p)
        p.add_argument("run_id")
        if action == "retry":
            p.add_argument("--reprocess", action="store_true")
    ap = sub.add_parser("apply", help="create or update the schemas, connections and pipelines of a YAML file "
                                      "over the side API (an admin key)")
    _api_args(ap)
    ap.add_argument("-f", "--file", required=True, help="YAML file with schemas:, connections:, pipelines:")
    ap.add_argument("--prune", action="store_true",
                    help="also delete the objects created over the API that the file does not name")
    ap.add_argument("--dry-run", action="store_true", help="check every object and print what would change")
    get = sub.add_parser("get", help="print schemas, connections or pipelines in the config file's shape")
    _api_args(get)
    get.add_argument("section", choices=["connections", "schemas", "pipelines"])
    get.add_argument("name", nargs="?", help="one object (default: all)")
    get.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml", help="default: %(default)s")
    return parser


def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("FEEDD_URL", "http://127.0.0.1:8080"),
                   help="side API URL (default: $FEEDD_URL, else %(default)s)")
    p.add_argument("--key", default=os.environ.get("FEEDD_API_KEY"), help="API key (default: $FEEDD_API_KEY)")
    p.add_argument("--cacert", metavar="FILE",
                   help="PEM CA certificate(s) to trust for an https:// URL, besides the system's "
                        "(or $SSL_CERT_FILE)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"serve": _serve, "check": _check, "passwd": _passwd, "apikey": _apikey, "hostkey": _hostkey,
               "migrate": _migrate, "try": _try, "push": _push, "runs": _runs, "apply": _apply, "get": _get}
    try:
        code = handler[args.command](args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        # The reader went away (`feedd runs show ID | head`): stop quietly, as Unix tools do. Output still
        # buffered goes to /dev/null, else Python's own flush at exit reports the broken pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


def _serve(args: argparse.Namespace) -> int:
    from feedd.daemon import serve

    return serve(args.config)


def _load(path: str) -> object:
    from feedd.config import load_config
    from feedd.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{len(exc.issues)} error(s) in the config:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    from feedd.config import Config
    from feedd.config.checks import warnings
    from feedd.summary import summarize

    config = _load(args.config)
    if not isinstance(config, Config):
        return 1
    print(summarize(config))
    sys.stdout.flush()  # the summary before the warnings on a terminal, where both streams show
    for warning in warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _passwd(args: argparse.Namespace) -> int:
    from feedd.credentials import hash_password

    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            print("feedd passwd: the passwords differ", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    try:
        print(hash_password(first))
    except ValueError as exc:
        print(f"feedd passwd: {exc}", file=sys.stderr)
        return 1
    return 0


def _apikey(args: argparse.Namespace) -> int:
    from feedd.credentials import new_api_key

    key, digest = new_api_key()
    print(f"key: {key}")
    print(f"key_sha256: {digest}")
    print("# give the key to the app; put the sha256 in http.api_keys[].key_sha256", file=sys.stderr)
    return 0


def _hostkey(args: argparse.Namespace) -> int:
    import asyncio

    from feedd import hostkeys
    from feedd.config import Config
    from feedd.errors import StartupError
    from feedd.store import configured

    config = _load(args.config)
    if not isinstance(config, Config):
        return 1
    try:
        if args.generate:
            keys = hostkeys.generate(config)
            asyncio.run(configured.record_host_key(config, keys[0].fingerprint, replace=True))
        else:
            keys, _ = hostkeys.ensure(config, state_exists=asyncio.run(configured.state_exists(config)))
    except StartupError as exc:
        print(f"feedd hostkey: {exc}", file=sys.stderr)
        return 1
    for key in keys:
        print(key)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    import asyncio
    import sqlite3

    from feedd.config import Config
    from feedd.errors import StartupError
    from feedd.store import configured

    config = _load(args.config)
    if not isinstance(config, Config):
        return 1
    try:
        before, after = asyncio.run(configured.migrate(config))
    except (StartupError, OSError, sqlite3.Error) as exc:
        print(f"feedd migrate: {exc}", file=sys.stderr)
        return 1
    where = "PostgreSQL (store.dsn)" if config.store.dsn else configured.sqlite_path(config)
    if before == after:
        print(f"schema up to date at version {after}: {where}")
    else:
        print(f"schema upgraded from version {before} to {after}: {where}")
    return 0


def _try(args: argparse.Namespace) -> int:
    from feedd.config import Config
    from feedd.tryrun import try_file

    config = _load(args.config)
    if not isinstance(config, Config):
        return 1
    return try_file(config, args.pipeline, args.file)


def _push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from feedd.client import Client, ClientError, read_records

    if not args.key:
        print("feedd push: an API key is needed (--key or $FEEDD_API_KEY)", file=sys.stderr)
        return 2
    tty = sys.stderr.isatty()

    def progress(sent: int, total: int, records: int) -> None:
        if tty:
            width = 30
            bar = "#" * (width * sent // total)
            print(f"\r[{bar:<{width}}] part {sent}/{total}, {records:,} records", end="", file=sys.stderr)

    try:
        client = Client(args.url, args.key, cafile=args.cacert)
    except OSError as exc:  # an unreadable --cacert (ssl.SSLError is an OSError)
        print(f"feedd {args.command}: --cacert {args.cacert}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        done = client.upload_json(args.connection, args.pipeline, read_records(Path(args.file)), args.part_size,
                                  filename=args.filename, progress=progress)
        if tty:
            print(file=sys.stderr)
        print(f"upload {done['uploadId']} completed: {done['records']} records, run {done['runId']}")
        if args.wait:
            run = client.wait_for_run(done["runId"])
            counts, error = run.get("counts") or {}, run.get("error")
            print(f"run {run['runId']}: {run['status']}: {counts.get('rows', 0)} rows, {counts.get('valid', 0)} valid,"
                  f" {counts.get('invalid', 0)} rejected" + (f"; {error['code']}: {error['message']}" if error else ""))
            return 0 if run["status"] not in ("failed", "needs_review") else 1
    except (ClientError, ValueError, OSError, TimeoutError) as exc:
        print(f"\nfeedd push: {exc}" if tty else f"feedd push: {exc}", file=sys.stderr)
        return 1
    return 0


def _runs(args: argparse.Namespace) -> int:
    import json

    from feedd.client import Client, ClientError

    if not args.key:
        print(f"feedd runs {args.action}: an API key is needed (--key or $FEEDD_API_KEY)", file=sys.stderr)
        return 2
    try:
        client = Client(args.url, args.key, cafile=args.cacert)
    except OSError as exc:  # an unreadable --cacert (ssl.SSLError is an OSError)
        print(f"feedd {args.command}: --cacert {args.cacert}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            page = client.runs(connection=args.connection, pipeline=args.pipeline, status=args.status,
                               acknowledged="false" if args.unacknowledged else None,
                               deliveryFailed="true" if args.delivery_failed else None, limit=args.limit)
            for line in _run_table(page["data"]):
                print(line)
            return 0
        if args.action == "show":
            result = client.run(args.run_id)
        elif args.action == "ack":
            result = client.ack(args.run_id)
        else:
            result = client.retry(args.run_id, reprocess=args.reprocess)
        print(json.dumps(result, indent=2))
    except ClientError as exc:
        print(f"feedd runs {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_table(runs: list[dict[str, Any]]) -> list[str]:
    """`feedd runs list`: one line per run, the source name last (it may hold spaces)."""
    widths = {"connection": max([10, *(len(r["connection"]) for r in runs)]),
              "pipeline": max([8, *(len(r["pipeline"] or "-") for r in runs)])}
    wc, wp = widths["connection"], widths["pipeline"]
    lines = [f"{'RUN':26}  {'CREATED (UTC)':19}  {'STATUS':12}  {'CONNECTION':{wc}}  {'PIPELINE':{wp}}  "
             f"{'ROWS':>8}  {'INVALID':>7}  {'ERROR':22}  {'DELIVERY':8}  SOURCE"]
    for r in runs:
        # ISO 8601 to the second: the list is for reading, `feedd runs show` has the full stamp
        created = str(r["createdAt"] or "-")[:19].replace("T", " ")
        error = (r.get("error") or {}).get("code") or "-"
        delivery = "failed" if r.get("deliveryFailed") else "-"
        lines.append(f"{r['runId']:26}  {created:19}  {r['status']:12}  {r['connection']:{wc}}  "
                     f"{(r['pipeline'] or '-'):{wp}}  {r['counts']['rows']:>8}  {r['counts']['invalid']:>7}  "
                     f"{error:22}  {delivery:8}  {r['source']['name']}")
    return lines


def _api_client(args: argparse.Namespace, what: str) -> Any:
    """A client for the side API from --url/--key/--cacert, or None after saying why not."""
    from feedd.client import Client

    if not args.key:
        print(f"feedd {what}: an API key is needed (--key or $FEEDD_API_KEY)", file=sys.stderr)
        return None
    try:
        return Client(args.url, args.key, cafile=args.cacert)
    except OSError as exc:  # an unreadable --cacert (ssl.SSLError is an OSError)
        print(f"feedd {what}: --cacert {args.cacert}: {exc.strerror or exc}", file=sys.stderr)
        return None


def _apply(args: argparse.Namespace) -> int:
    from pathlib import Path

    from feedd.apply import ApplyFileError, apply, read_objects

    client = _api_client(args, "apply")
    if client is None:
        return 2
    try:
        objects = read_objects(Path(args.file), lambda text: print(f"warning: {text}", file=sys.stderr))
    except ApplyFileError as exc:
        print(f"feedd apply: {exc}", file=sys.stderr)
        return 1
    if args.prune and not objects:  # most likely the wrong file: it would delete every managed object
        print(f"feedd apply: {args.file} has no schemas:, connections: or pipelines: section; --prune would "
              f"delete every object created over the API (give an empty section to mean that)", file=sys.stderr)
        return 1
    return apply(client, objects, prune=args.prune, dry_run=args.dry_run)


def _get(args: argparse.Namespace) -> int:
    from feedd.apply import dump, get
    from feedd.client import ClientError

    client = _api_client(args, "get")
    if client is None:
        return 2
    try:
        print(dump(get(client, args.section, args.name), args.output), end="")
    except ClientError as exc:
        print(f"feedd get: {exc}", file=sys.stderr)
        return 1
    return 0
