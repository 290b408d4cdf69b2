"""The ``kmslocal`` command: ``serve`` runs the key service in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

import uvicorn

from kmslocal import __version__
from kmslocal import config as config_mod
from kmslocal.config import DEV_PRINCIPALS, Config
from kmslocal.server import create_app, open_service


class _Server(uvicorn.Server):
    """Announces the bound address once the server accepts connections."""

    def __init__(self, config: uvicorn.Config, announce: str) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._announce, flush=True)


def _dev_help(url: str, config: Config) -> str:
    lines = [f"kmslocal dev mode; region {config.region}; principals:"]
    for p in config.principals:
        lines.append(f"  {p.principal_arn}")
        if p in DEV_PRINCIPALS:
            lines.append(
                f"    AWS_ACCESS_KEY_ID={p.access_key_id} "
                f"AWS_SECRET_ACCESS_KEY={p.secret_access_key}"
            )
    lines += [
        "point boto3 at it:",
        f'  boto3.client("kms", endpoint_url="{url}", region_name="{config.region}",',
        '               aws_access_key_id=..., aws_secret_access_key=...)',
        '  ("sts" for GetCallerIdentity and "cloudtrail" for LookupEvents: the same URL)',
        "dev controls: GET/POST /_kmslocal/clock, POST/DELETE /_kmslocal/faults,",
        "  GET/PUT/POST /_kmslocal/event-targets",
    ]
    return "\n".join(lines)


DESCRIPTION = (
    "kmslocal: a local key service that speaks the AWS KMS wire protocol, STS "
    "GetCallerIdentity and CloudTrail LookupEvents, so unmodified boto3 code runs against "
    "it. A development and test service, not an HSM: never put real customer data under "
    "its keys."
)
SERVE_DESCRIPTION = (
    "Run the key service in the foreground until interrupted. Once it accepts "
    "connections it prints 'kmslocal listening on http://HOST:PORT'."
)


def build_parser() -> argparse.ArgumentParser:
    """Every ``--help`` text is plain: it is read in a terminal, not rendered."""
    parser = argparse.ArgumentParser(prog="kmslocal", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"kmslocal {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands", help="one of:")
    serve = sub.add_parser("serve", help="run the key service",
                           description=SERVE_DESCRIPTION)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=4599,
                       help="port to listen on; 0 picks a free port (default: 4599)")
    serve.add_argument("--data-dir", type=Path, metavar="DIR",
                       default=Path(os.environ.get("KMSLOCAL_DATA_DIR", ".kmslocal")),
                       help="folder for the key database and its root key; kept across "
                            "restarts (default: $KMSLOCAL_DATA_DIR, else .kmslocal)")
    serve.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="TOML file with the region, principals and event targets "
                            "(default: region us-west-2 and the two dev principals)")
    serve.add_argument("--dev", action="store_true",
                       help="enable the clock, fault and event-target controls and print "
                            "the dev principals' credentials")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per delivery is noise
    try:
        config = config_mod.load(args.config)
        service = open_service(args.data_dir, config, args.dev)
    except (config_mod.ConfigError, ValueError, OSError) as e:
        print(f"kmslocal: {e}", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        print(f"kmslocal: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    announce = f"kmslocal listening on {url}"
    if args.dev:
        announce = _dev_help(url, config) + "\n" + announce
    app = create_app(service, args.dev)
    server = _Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                       lifespan="on"),
        announce,
    )
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
