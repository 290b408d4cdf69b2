"""The ``cmek`` command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cmek import __version__
from cmek.errors import CmekError


def _database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    if os.environ.get("CMEK_DATABASE_URL"):
        return os.environ["CMEK_DATABASE_URL"]
    data_dir = Path(os.environ.get("CMEK_DATA_DIR", "data"))
    return f"sqlite:///{data_dir / 'control.sqlite3'}"


def _audit(args: argparse.Namespace) -> int:
    from cmek.audit import AuditTrail
    from cmek.clock import SystemClock
    from cmek.db import create_engine

    url = _database_url(args)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        print(f"cmek: no database at {url}", file=sys.stderr)
        return 2
    trail = AuditTrail(create_engine(url), SystemClock())
    if args.audit_command == "verify":
        result = trail.verify(args.tenant)
        for problem in result.problems:
            print(problem)
        state = "intact" if result.ok else "BROKEN"
        print(f"audit trail of {args.tenant}: {result.entries} entries, {state}")
        return 0 if result.ok else 1
    if args.out and args.out != "-":
        with open(args.out, "w", encoding="utf-8") as out:
            count = trail.export(args.tenant, out)
        print(f"wrote {count} entries to {args.out}", file=sys.stderr)
    else:
        trail.export(args.tenant, sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmek", description="Bring your own key for SaaS.")
    parser.add_argument("--version", action="version", version=f"cmek {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    audit = sub.add_parser("audit", help="verify or export a tenant's audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    for name, text in (("verify", "check the hash chain"), ("export", "write JSON lines")):
        cmd = audit_sub.add_parser(name, help=text)
        cmd.add_argument("--tenant", required=True)
        cmd.add_argument("--database-url", help="default: $CMEK_DATABASE_URL, else "
                         "sqlite under $CMEK_DATA_DIR")
        if name == "export":
            cmd.add_argument("--out", help="file to write (default: standard output)")
        cmd.set_defaults(func=_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CmekError as e:
        print(f"cmek: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cmek: {e.strerror}: {e.filename}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
