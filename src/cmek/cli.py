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
import time
from pathlib import Path
from typing import Any, NoReturn

from cmek import __version__
from cmek.errors import CmekError, InvalidInput

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# Codes of mistakes in how the command was used: exit 2, whatever the command.
USAGE_CODES = frozenset({"invalid_input", "invalid_account", "file_unreadable", "not_json",
                         "policy_invalid", "config_invalid", "unknown_category"})
ENDPOINT_VAR = "CMEK_KMS_ENDPOINT_URL"


class FileUnreadable(InvalidInput):
    code = "file_unreadable"


class NotJson(InvalidInput):
    code = "not_json"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --- AWS options ------------------------------------------------------------------------
def _region(args: argparse.Namespace) -> str:
    region = (args.region or os.environ.get("CMEK_KMS_REGION") or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION"))
    if not region:
        raise InvalidInput("no AWS Region: pass --region or set AWS_REGION")
    return str(region)


def _endpoint(args: argparse.Namespace) -> str | None:
    url = args.endpoint_url or os.environ.get(ENDPOINT_VAR) or None
    if url is not None and not url.startswith(("http://", "https://")):
        where = "--endpoint-url" if args.endpoint_url else ENDPOINT_VAR
        raise InvalidInput(f"{where} must be an http:// or https:// URL, e.g. "
                           f"http://127.0.0.1:4599, not {url[:80]!r}")
    return url


def _where(args: argparse.Namespace) -> str:
    """The KMS a command talks to, for messages."""
    return _endpoint(args) or f"AWS KMS in {_region(args)}"


def _session(args: argparse.Namespace) -> Any:
    import boto3

    return boto3.Session(profile_name=args.profile, region_name=_region(args))


def _boto_client(args: argparse.Namespace, service: str) -> Any:
    from botocore.config import Config

    make: Any = _session(args).client  # one function for the kms, sts and cloudtrail clients
    return make(service, endpoint_url=_endpoint(args), config=Config(
        connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"}))


def _caller_account(args: argparse.Namespace) -> str:
    """Whose credentials these are (STS GetCallerIdentity), or a one-line error saying how
    to give working ones."""
    from cmek.customer.keys import KeyCreateFailed, aws_error

    try:
        return str(_boto_client(args, "sts").get_caller_identity()["Account"])
    except Exception as e:
        mapped = aws_error(e, step="GetCallerIdentity",
                           failed=lambda m, s, c: KeyCreateFailed(m, step=s, aws_code=c))
        if mapped is None:
            raise
        raise _explain(mapped, args) from None


def _explain(error: CmekError, args: argparse.Namespace) -> CmekError:
    """An AWS failure with what to do about it: where the endpoint is, which Region the
    credentials were signed for, how to give credentials."""
    from cmek.customer.keys import CredentialsInvalid, EndpointUnreachable

    if isinstance(error, EndpointUnreachable):
        error.message = (f"{error.message}: nothing answers at {_where(args)}; check "
                         f"--endpoint-url or {ENDPOINT_VAR}, and the network")
    elif isinstance(error, CredentialsInvalid):
        if "region" in error.message.lower():
            error.message = (f"{error.message}: the endpoint does not serve Region "
                             f"{_region(args)}; check --region or AWS_REGION")
        else:
            error.message = f"{error.message}; {error.hint}"
    return error


# --- input files ----------------------------------------------------------------------
def _read_text(path: str) -> str:
    """A file's text, or standard input for ``-``."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise FileUnreadable(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise FileUnreadable(f"cannot read {path}: not UTF-8 text") from None


def _read_json_file(path: str) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except ValueError as e:
        raise NotJson(f"{path} is not JSON: {e}") from None


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

    provider = validate_account(args.provider_account)
    text = _read_text(args.file)
    owner = validate_account(args.owner_account) if args.owner_account else None
    result = lint(text, provider, owner, args.tenant)
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
    name = "standard input" if args.file == "-" else args.file
    print(f"{name}: {verdict} ({errors} errors, {warnings} warnings)")
    return result.exit_code


# --- keys -----------------------------------------------------------------------------
def _key_create(args: argparse.Namespace) -> int:
    from cmek.customer.keys import CustomerKeyError, create_key
    from cmek.customer.policy import validate_account
    from cmek.ids import validate_tenant_id

    provider = validate_account(args.provider_account)
    if args.tenant is not None:
        validate_tenant_id(args.tenant)
    if _caller_account(args) == provider:
        raise InvalidInput(f"the provider account {provider} is the account of these "
                           "credentials: create the key with your own (the customer's) "
                           "credentials, and give the provider's account id")
    try:
        created = create_key(_boto_client(args, "kms"), provider, alias=args.alias,
                             tenant=args.tenant)
    except CustomerKeyError as e:
        raise _explain(e, args) from None
    if args.json:
        _print_json(created.to_json())
    else:
        print(created.key_arn)
        print(f"share this key ARN with the provider; alias: {created.alias or '-'}",
              file=sys.stderr)
    return 0


def _provider_account(args: argparse.Namespace) -> str:
    from cmek.customer.policy import validate_account

    account = args.provider_account or os.environ.get("CMEK_PROVIDER_ACCOUNT")
    if not account:
        raise InvalidInput("pass --provider-account (the 12-digit account the platform calls "
                           "KMS as) or set CMEK_PROVIDER_ACCOUNT")
    return validate_account(account)


def _key_verify(args: argparse.Namespace) -> int:
    from cmek.customer.keys import verify_key
    from cmek.kms import BotoKms, KeyArn, KmsMisconfigured, KmsSettings

    provider = _provider_account(args)
    try:
        KeyArn.parse(args.key_arn)
    except KmsMisconfigured as e:
        raise InvalidInput(e.message) from None
    if args.tenant is not None:
        from cmek.ids import validate_tenant_id

        validate_tenant_id(args.tenant)
    region = _region(args)
    _caller_account(args)  # credentials and endpoint that do not work: one line, no report
    kms = BotoKms(KmsSettings(region=region, endpoint_url=_endpoint(args), profile=args.profile,
                              max_attempts=2))
    report = verify_key(kms, args.key_arn, region=region, tenant=args.tenant,
                        provider_account=provider)
    if args.json:
        _print_json(report.to_json())
        return 0 if report.ok else EXIT_FAILED
    for check in report.checks:
        status = "ok  " if check.ok else "SKIP" if check.skipped else "FAIL"
        print(f"{status} {check.name}: {check.detail}")
        if not check.ok and not check.skipped and check.fix:
            print(f"     fix: {check.fix}")
    if args.tenant is None:
        print("note: no --tenant: the checks ran with the encryption context of tenant "
              "\"verify\"; a key policy restricted to a tenant refuses them (pass --tenant)")
    print("key verified" if report.ok else "key NOT usable by the provider")
    return 0 if report.ok else EXIT_FAILED


def _usage(args: argparse.Namespace) -> int:
    from cmek.customer.usage import parse_since, usage_report
    from cmek.kms import KeyArn, KmsMisconfigured

    try:
        KeyArn.parse(args.key_arn)
    except KmsMisconfigured as e:
        raise InvalidInput(e.message) from None
    since = parse_since(args.since)
    _known_key(args)
    report = usage_report(_boto_client(args, "cloudtrail"), args.key_arn,
                          since_seconds=since, now=time.time())
    if args.json:
        _print_json({**report.to_json(), "since": _iso(report.since),
                     "until": _iso(report.until), "first_use": _iso(report.first_use),
                     "last_use": _iso(report.last_use)})
        return 0
    print(f"usage of {report.key_arn}: {report.total} calls "
          f"from {_iso(report.since)} to {_iso(report.until)}")
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


def _known_key(args: argparse.Namespace) -> None:
    """The key exists for these credentials (DescribeKey): a typo in the ARN is said, not
    reported as a key nobody used."""
    from cmek.customer.keys import CustomerKeyError, aws_error
    from cmek.customer.usage import UsageLookupFailed

    try:
        _boto_client(args, "kms").describe_key(KeyId=args.key_arn)
    except Exception as e:
        mapped: CustomerKeyError | None = aws_error(
            e, step="DescribeKey", failed=lambda m, s, c: UsageLookupFailed(
                f"{m} (is the key ARN right, and is it the key of these credentials' "
                "account?)" if c == "NotFoundException" else m, step=s, aws_code=c))
        if mapped is None:
            raise
        raise _explain(mapped, args) from None


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
            _print_json({"tenant": result.tenant, "ok": result.ok, "entries": result.entries,
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
    render.set_defaults(func=_policy_render)
    merge = psub.add_parser("merge", help="add the provider statements to an existing policy")
    merge.add_argument("file", help="the key policy as KMS returns it (- for standard input)")
    merge.add_argument("--provider-account", required=True, help=account)
    merge.add_argument("--tenant", help=tenant)
    _json_option(merge, "(the output is always JSON)")
    merge.set_defaults(func=_policy_merge)
    lint = psub.add_parser("lint", help="check a key policy: 0 ok, 1 errors, 2 not a policy")
    lint.add_argument("file", help="the key policy (- for standard input)")
    lint.add_argument("--provider-account", required=True, help=account)
    lint.add_argument("--owner-account", help="the key owner's (your) account id")
    lint.add_argument("--tenant", help="check the policy as the provider uses it for this "
                      "tenant")
    _json_option(lint)
    lint.set_defaults(func=_policy_lint)

    key = sub.add_parser("key", help="create (customer) or verify (provider) a key")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    create = ksub.add_parser("create", help="create a key with the merged policy (customer)")
    create.add_argument("--provider-account", required=True, help=account)
    create.add_argument("--alias", help="a name for the key (alias/NAME)")
    create.add_argument("--tenant", help=tenant)
    _aws_options(create)
    create.set_defaults(func=_key_create)
    verify = ksub.add_parser("verify", help="check a key before provisioning (provider, "
                             "with the provider's credentials)")
    verify.add_argument("--key-arn", required=True, help="the key ARN the customer gave")
    verify.add_argument("--tenant", help="the tenant the key is for (its encryption context)")
    verify.add_argument("--provider-account",
                        help=f"{account}: the checks must run as it "
                        "(default: $CMEK_PROVIDER_ACCOUNT)")
    _aws_options(verify)
    verify.set_defaults(func=_key_verify)

    usage = sub.add_parser("usage", help="summarize a key's usage log (customer)")
    usage.add_argument("--key-arn", required=True, help="your key's ARN")
    usage.add_argument("--since", default="24h", help="how far back: 30m, 24h, 7d ... "
                       "(default 24h)")
    _aws_options(usage)
    usage.set_defaults(func=_usage)

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
