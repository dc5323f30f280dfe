"""``practice-hub serve`` runs the hub; ``practice-hub token`` prints a join token."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hub.ids import ParticipantIdentity, RoomName
from hub.settings import Settings
from hub.tokens import Role, TokenSigner, grant_for_role


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("data_dir", getattr(args, "data_dir", None)),
            ("redis_url", getattr(args, "redis_url", None)),
        )
        if value is not None
    }
    return Settings(**overrides)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from web.app import create_app

    settings = _settings(args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ssl = {}
    if settings.tls_cert and settings.tls_key:
        ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws_max_size=256 * 1024 + 1024,
        # Open event streams (dashboard, notices) must not hold up shutdown.
        timeout_graceful_shutdown=5,
        log_level="info",
        **ssl,  # type: ignore[arg-type]
    )


def token(args: argparse.Namespace) -> None:
    settings = _settings(args)
    grant = grant_for_role(
        RoomName(args.room),
        ParticipantIdentity(args.identity),
        Role(args.role),
        ttl=args.ttl,
        name=args.name,
    )
    print(TokenSigner(settings.resolved_secret()).issue(grant))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="practice-hub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="run the hub")
    run.add_argument("--host", help="listen address (HUB_HOST, default 127.0.0.1)")
    run.add_argument("--port", type=int, help="HTTP port (HUB_PORT, default 8080)")
    run.add_argument("--data-dir", type=Path, help="data directory (HUB_DATA_DIR, default ./data)")
    run.add_argument("--redis-url", help="share state through Redis (HUB_REDIS_URL)")
    run.set_defaults(func=serve)

    mint = commands.add_parser("token", help="print a signed join token")
    mint.add_argument("--room", required=True)
    mint.add_argument("--identity", required=True)
    mint.add_argument("--role", required=True, choices=[r.value for r in Role])
    mint.add_argument("--name", help="display name (default: the identity)")
    mint.add_argument("--ttl", type=float, default=24 * 3600, help="seconds (default 86400)")
    mint.add_argument("--data-dir", type=Path, help="where the generated secret lives")
    mint.set_defaults(func=token)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as exc:
        parser.exit(2, f"practice-hub: {exc}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
