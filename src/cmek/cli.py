"""The ``cmek`` command: onboarding tools for customers and providers, audit tools, the
platform server and its demo.

Every subcommand prints readable text, or JSON with ``--json``. Every failure is one line
on stderr, ``cmek: <code>: <message>``, never a stack trace; with ``--json`` the same
failure is also a JSON object, ``{"error": <code>, "message": <line>}``, on stdout.

Exit status: 0 done (for ``policy lint`` and ``key verify``: no problem found); 1 the
operation failed or found problems (AWS refused, a check failed, lint errors, an
unreachable endpoint, bad credentials); 2 the command was used wrongly (a bad argument,
a file that cannot be read or is not JSON, a bad setting), nothing was done; 130
interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from cmek import __version__
from cmek.customer import commands
from cmek.customer.commands import ENDPOINT_VAR, EXIT_FAILED, FileUnreadable, print_json
from cmek.errors import CmekError

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
# Codes of mistakes in how the command was used: exit 2, whatever the command.
USAGE_CODES = frozenset({"invalid_input", "invalid_account", "file_unreadable", "not_json",
                         "policy_invalid", "config_invalid", "unknown_category"})


# --- audit ----------------------------------------------------------------------------
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
    from cmek.db import create_engine, normalize_url, redact_url, unreachable
    from cmek.errors import StoreUnreachable, UnknownTenant

    url = normalize_url(_database_url(args))
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise FileUnreadable(f"no database at {url} (pass --database-url, or set "
                             "CMEK_DATABASE_URL or CMEK_DATA_DIR)")
    engine = create_engine(url)
    if (why := unreachable(engine)) is not None:
        where = "--database-url" if args.database_url else "CMEK_DATABASE_URL"
        raise StoreUnreachable(f"cannot connect to {redact_url(url)} ({where}): {why}")
    trail = AuditTrail(engine, SystemClock())
    if args.tenant not in trail.tenants():
        raise UnknownTenant(f"no audit trail for tenant {args.tenant[:64]!r} in this "
                            "database: check the tenant id and --database-url")
    if args.audit_command == "verify":
        result = trail.verify(args.tenant)
        if args.json:
            print_json({"tenant": result.tenant, "ok": result.ok, "entries": result.entries,
                         "problems": result.problems})
        else:
            for problem in result.problems:
                print(problem)
            state = "intact" if result.ok else "BROKEN"
            print(f"audit trail of {args.tenant}: {result.entries} entries, {state}")
        return 0 if result.ok else EXIT_FAILED
    if args.out and args.out != "-":
        with open(args.out, "w", encoding="utf-8") as out:
            count = trail.export(args.tenant, out)
        print(f"wrote {count} entries to {args.out}", file=sys.stderr)
    else:
        trail.export(args.tenant, sys.stdout)
    return 0


# --- serve and demo -------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    from cmek.platform.server import serve

    return serve(config_file=Path(args.config) if args.config else None, host=args.host,
                 port=args.port, dev=args.dev or None, as_json=args.json)


def _demo(args: argparse.Namespace) -> int:
    from cmek.platform.demo import main as demo

    return demo(as_json=args.json, keep=args.keep)


# --- parser ---------------------------------------------------------------------------
class _Refused(Exception):
    """argparse's refusal of the command line, raised so it is reported like any other."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Refused(f"{message} (see: {self.prog} --help)")


def _aws_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help=f"the KMS endpoint, e.g. kmslocal's "
                   f"http://127.0.0.1:4599 (default: ${ENDPOINT_VAR}, else AWS)")
    p.add_argument("--region", help="the AWS Region (default: $CMEK_KMS_REGION, $AWS_REGION)")
    p.add_argument("--profile", help="an AWS CLI profile (default: the standard credential "
                   "chain: AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ...)")
    p.add_argument("--json", action="store_true", help="print JSON (failures too)")


def _json_option(p: argparse.ArgumentParser, output: str = "print JSON (failures too)") -> None:
    p.add_argument("--json", action="store_true", help=output)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cmek", description="Bring your own key for SaaS: onboarding tools "
                     "for the customer and the provider, the platform, and its demo.")
    parser.add_argument("--version", action="version", version=f"cmek {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    policy = sub.add_parser("policy", help="the key policy the provider needs")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    account = "the provider's 12-digit AWS account id"
    tenant = "restrict the provider's use to this tenant's encryption context"
    render = psub.add_parser("render", help="print the provider statements or a whole policy")
    render.add_argument("--provider-account", required=True, help=account)
    render.add_argument("--owner-account",
                        help="print a complete policy for a new key of this (your) account")
    render.add_argument("--tenant", help=tenant)
    _json_option(render, "(the output is always JSON)")
    render.set_defaults(func=commands.policy_render)
    merge = psub.add_parser("merge", help="add the provider statements to an existing policy")
    merge.add_argument("file", help="the key policy as KMS returns it (- for standard input)")
    merge.add_argument("--provider-account", required=True, help=account)
    merge.add_argument("--tenant", help=tenant)
    _json_option(merge, "(the output is always JSON)")
    merge.set_defaults(func=commands.policy_merge)
    lint = psub.add_parser("lint", help="check a key policy: 0 ok, 1 errors, 2 not a policy")
    lint.add_argument("file", help="the key policy (- for standard input)")
    lint.add_argument("--provider-account", required=True, help=account)
    lint.add_argument("--owner-account", help="the key owner's (your) account id")
    lint.add_argument("--tenant", help="check the policy as the provider uses it for this "
                      "tenant")
    _json_option(lint)
    lint.set_defaults(func=commands.policy_lint)

    key = sub.add_parser("key", help="create (customer) or verify (provider) a key")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    create = ksub.add_parser("create", help="create a key with the merged policy (customer)")
    create.add_argument("--provider-account", required=True, help=account)
    create.add_argument("--alias", help="a name for the key (alias/NAME)")
    create.add_argument("--tenant", help=tenant)
    _aws_options(create)
    create.set_defaults(func=commands.key_create)
    verify = ksub.add_parser("verify", help="check a key before provisioning (provider, "
                             "with the provider's credentials)")
    verify.add_argument("--key-arn", required=True, help="the key ARN the customer gave")
    verify.add_argument("--tenant", help="the tenant the key is for (its encryption context)")
    verify.add_argument("--provider-account",
                        help=f"{account}: the checks must run as it "
                        "(default: $CMEK_PROVIDER_ACCOUNT)")
    _aws_options(verify)
    verify.set_defaults(func=commands.key_verify)

    usage = sub.add_parser("usage", help="summarize a key's usage log (customer)")
    usage.add_argument("--key-arn", required=True, help="your key's ARN")
    usage.add_argument("--since", default="24h", help="how far back: 30m, 24h, 7d ... "
                       "(default 24h)")
    _aws_options(usage)
    usage.set_defaults(func=commands.usage)

    serve = sub.add_parser("serve", help="run the platform (HTTP API and web pages)")
    serve.add_argument("--config", help="a TOML file (every setting also has a CMEK_* "
                       "variable: docs/config.md)")
    serve.add_argument("--host", help="the address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="the port (default 8000; 0 picks a free one)")
    serve.add_argument("--dev", action="store_true",
                       help="development mode: a clock that can be moved forward")
    _json_option(serve, "print the start-up summary as one JSON line")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="the whole key lifecycle, scripted, on a local stack "
                          "(free ports, a temporary folder)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temporary folder (it holds kmslocal's root key)")
    _json_option(demo, "print the steps and their timings as JSON")
    demo.set_defaults(func=_demo)

    audit = sub.add_parser("audit", help="verify or export a tenant's audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    for name, text in (("verify", "check the hash chain"), ("export", "write JSON lines")):
        cmd = audit_sub.add_parser(name, help=text)
        cmd.add_argument("--tenant", required=True, help="the tenant id")
        cmd.add_argument("--database-url", help="the control plane (default: "
                         "$CMEK_DATABASE_URL, else SQLite under $CMEK_DATA_DIR)")
        if name == "export":
            cmd.add_argument("--out", help="file to write (default: standard output)")
            _json_option(cmd, "(the output is always JSON lines)")
        else:
            _json_option(cmd)
        cmd.set_defaults(func=_audit)
    return parser


def _fail(code: str, message: str, as_json: bool) -> int:
    line = " ".join(message.split())
    print(f"cmek: {code}: {line}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": code, "message": line}))
    return EXIT_USAGE if code in USAGE_CODES else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except _Refused as e:
        return _fail("invalid_input", str(e), as_json)
    except CmekError as e:
        return _fail(e.code, e.message, as_json)
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        return _fail("os_error", f"{e.strerror}: {e.filename}", as_json)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:  # a tool prints one line, never a stack trace
        if type(e).__module__.startswith(("botocore", "boto3")):
            return _fail("aws_error", str(e)[:300], as_json)
        return _fail("internal_error", f"{type(e).__name__}: {str(e)[:300]}", as_json)


if __name__ == "__main__":
    sys.exit(main())
