"""The ``cmek`` command: onboarding tools for customers and providers, audit tools.

Every subcommand prints readable text, or JSON with ``--json``; every failure is one
line on stderr with a stable code and a non-zero exit, never a stack trace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cmek import __version__
from cmek.errors import CmekError, InvalidInput

EXIT_USAGE = 2


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _region(args: argparse.Namespace) -> str:
    region = (args.region or os.environ.get("CMEK_KMS_REGION") or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION"))
    if not region:
        raise InvalidInput("no region: pass --region or set AWS_REGION")
    return str(region)


def _endpoint(args: argparse.Namespace) -> str | None:
    return args.endpoint_url or os.environ.get("CMEK_KMS_ENDPOINT_URL") or None


def _boto_client(args: argparse.Namespace, service: str) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.Session(profile_name=args.profile, region_name=_region(args))
    make: Any = session.client  # one function for the kms and cloudtrail clients
    return make(service, endpoint_url=_endpoint(args), config=Config(
        connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"}))


def _read_json_file(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise InvalidInput(f"{path} is not JSON: {e}") from None


# --- policy ---------------------------------------------------------------------------
def _policy_render(args: argparse.Namespace) -> int:
    from cmek.customer.policy import render, validate_account

    owner = validate_account(args.owner_account) if args.owner_account else None
    _print_json(render(validate_account(args.provider_account), owner, args.tenant))
    return 0


def _policy_merge(args: argparse.Namespace) -> int:
    from cmek.customer.policy import merge, validate_account

    existing = _read_json_file(args.file)
    _print_json(merge(existing, validate_account(args.provider_account), args.tenant))
    return 0


def _policy_lint(args: argparse.Namespace) -> int:
    from cmek.customer.policy import lint, validate_account

    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as e:
        print(f"cmek: not_a_policy: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    owner = validate_account(args.owner_account) if args.owner_account else None
    result = lint(text, validate_account(args.provider_account), owner)
    if args.json:
        _print_json({"exit_code": result.exit_code, "is_policy": result.is_policy,
                     "findings": [f.to_json() for f in result.findings]})
        return result.exit_code
    for f in result.findings:
        print(f"{f.severity.upper():7} {f.code} [{f.statement}]: {f.message}")
        print(f"        fix: {f.fix}")
    errors = sum(f.severity == "error" for f in result.findings)
    warnings = len(result.findings) - errors
    verdict = "not a policy" if not result.is_policy else (
        "has errors" if errors else "correct and least-privilege")
    print(f"{args.file}: {verdict} ({errors} errors, {warnings} warnings)")
    return result.exit_code


# --- keys -----------------------------------------------------------------------------
def _key_create(args: argparse.Namespace) -> int:
    from cmek.customer.keys import create_key
    from cmek.customer.policy import validate_account

    created = create_key(_boto_client(args, "kms"), validate_account(args.provider_account),
                         alias=args.alias, tenant=args.tenant)
    if args.json:
        _print_json(created.to_json())
    else:
        print(created.key_arn)
        print(f"share this key ARN with the provider; alias: {created.alias or '-'}",
              file=sys.stderr)
    return 0


def _key_verify(args: argparse.Namespace) -> int:
    from cmek.customer.keys import verify_key
    from cmek.kms import BotoKms, KmsSettings

    region = _region(args)
    kms = BotoKms(KmsSettings(region=region, endpoint_url=_endpoint(args), profile=args.profile,
                              max_attempts=2))
    report = verify_key(kms, args.key_arn, region=region, tenant=args.tenant,
                        provider_account=args.provider_account)
    if args.json:
        _print_json(report.to_json())
    else:
        for check in report.checks:
            print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
            if not check.ok and check.fix:
                print(f"     fix: {check.fix}")
        print("key verified" if report.ok else "key NOT usable by the provider")
    return 0 if report.ok else 1


def _usage(args: argparse.Namespace) -> int:
    from cmek.customer.usage import parse_since, usage_report
    from cmek.kms import KeyArn

    KeyArn.parse(args.key_arn)
    report = usage_report(_boto_client(args, "cloudtrail"), args.key_arn,
                          since_seconds=parse_since(args.since), now=time.time())
    if args.json:
        _print_json(report.to_json())
        return 0
    print(f"usage of {report.key_arn}: {report.total} calls")
    if report.first_use is not None and report.last_use is not None:
        print(f"first use {_iso(report.first_use)}, last use {_iso(report.last_use)}")
    if report.calls:
        print(f"\n{'operation':<34}{'category':<24}{'tenant':<24}{'calls':>7}")
        for row in report.calls:
            print(f"{row['operation']:<34}{row['category']:<24}{row['tenant']:<24}"
                  f"{row['count']:>7}")
    if report.refusals:
        print(f"\n{'refused operation':<34}{'error':<34}{'count':>7}")
        for row in report.refusals:
            print(f"{row['operation']:<34}{row['error_code']:<34}{row['count']:>7}")
    if report.principals:
        print("\ncallers:")
        for p in report.principals:
            print(f"  {p['arn']} (account {p['account']}): {p['count']}")
    return 0


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


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
    from cmek.db import create_engine

    url = _database_url(args)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        print(f"cmek: no database at {url}", file=sys.stderr)
        return EXIT_USAGE
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


# --- serve ----------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    from cmek.platform.server import serve

    return serve(config_file=Path(args.config) if args.config else None, host=args.host,
                 port=args.port, dev=args.dev or None)


def _demo(args: argparse.Namespace) -> int:
    from cmek.platform.demo import main as demo

    return demo()


# --- parser ---------------------------------------------------------------------------
def _aws_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="KMS endpoint (default: AWS; or $CMEK_KMS_ENDPOINT_URL)")
    p.add_argument("--region", help="default: $CMEK_KMS_REGION, $AWS_REGION")
    p.add_argument("--profile", help="AWS profile (default: the standard credential chain)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmek", description="Bring your own key for SaaS.")
    parser.add_argument("--version", action="version", version=f"cmek {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    policy = sub.add_parser("policy", help="the key policy the provider needs")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    render = psub.add_parser("render", help="print the provider statements or a whole policy")
    render.add_argument("--provider-account", required=True)
    render.add_argument("--owner-account", help="print a complete policy for this key owner")
    render.add_argument("--tenant", help="restrict use to this tenant's encryption context")
    render.add_argument("--json", action="store_true", help="(output is always JSON)")
    render.set_defaults(func=_policy_render)
    merge = psub.add_parser("merge", help="add the provider statements to an existing policy")
    merge.add_argument("file")
    merge.add_argument("--provider-account", required=True)
    merge.add_argument("--tenant")
    merge.add_argument("--json", action="store_true", help="(output is always JSON)")
    merge.set_defaults(func=_policy_merge)
    lint = psub.add_parser("lint", help="check a key policy: 0 ok, 1 errors, 2 not a policy")
    lint.add_argument("file")
    lint.add_argument("--provider-account", required=True)
    lint.add_argument("--owner-account")
    lint.add_argument("--json", action="store_true")
    lint.set_defaults(func=_policy_lint)

    key = sub.add_parser("key", help="create (customer) or verify (provider) a key")
    ksub = key.add_subparsers(dest="key_command", required=True)
    create = ksub.add_parser("create", help="create a key with the merged policy (customer)")
    create.add_argument("--provider-account", required=True)
    create.add_argument("--alias")
    create.add_argument("--tenant")
    _aws_options(create)
    create.set_defaults(func=_key_create)
    verify = ksub.add_parser("verify", help="check a key before provisioning (provider)")
    verify.add_argument("--key-arn", required=True)
    verify.add_argument("--tenant")
    verify.add_argument("--provider-account", help="named in the fixes")
    _aws_options(verify)
    verify.set_defaults(func=_key_verify)

    usage = sub.add_parser("usage", help="summarize a key's usage log (customer)")
    usage.add_argument("--key-arn", required=True)
    usage.add_argument("--since", default="24h", help="e.g. 30m, 24h, 7d (default 24h)")
    _aws_options(usage)
    usage.set_defaults(func=_usage)

    serve = sub.add_parser("serve", help="run the platform (HTTP API)")
    serve.add_argument("--config", help="TOML file (every setting also has a CMEK_* variable)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int, help="0 picks a free port")
    serve.add_argument("--dev", action="store_true", help="dev mode: movable clock")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="the whole key lifecycle, scripted, on a local stack")
    demo.set_defaults(func=_demo)

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
    except InvalidInput as e:
        print(f"cmek: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    except CmekError as e:
        print(f"cmek: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cmek: {e.strerror}: {e.filename}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a tool prints one line, never a stack trace
        if type(e).__module__.startswith(("botocore", "boto3")):
            print(f"cmek: aws_error: {str(e)[:300]}", file=sys.stderr)
        else:
            print(f"cmek: internal_error: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
