"""`feedd` sub-commands: parse arguments and call into the package; no logic of its own."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "/etc/feedd/feedd.yaml"


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"serve": _serve, "check": _check, "passwd": _passwd, "apikey": _apikey, "hostkey": _hostkey,
               "try": _try}
    return handler[args.command](args)


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
    from feedd.summary import summarize

    config = _load(args.config)
    if not isinstance(config, Config):
        return 1
    print(summarize(config))
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
    from feedd import hostkeys
    from feedd.config import Config
    from feedd.errors import StartupError

    config = _load(args.config)
    if not isinstance(config, Config):
        return 1
    try:
        if args.generate:
            keys = hostkeys.generate(config)
        else:
            keys, _ = hostkeys.ensure(config)
    except StartupError as exc:
        print(f"feedd hostkey: {exc}", file=sys.stderr)
        return 1
    for key in keys:
        print(key)
    return 0


def _try(args: argparse.Namespace) -> int:
    from feedd.config import Config
    from feedd.tryrun import try_file

    config = _load(args.config)
    if not isinstance(config, Config):
        return 1
    return try_file(config, args.pipeline, args.file)
