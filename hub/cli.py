"""``practice-hub serve`` runs the hub; ``practice-hub admin create`` makes the first
center administrator; ``practice-hub token`` prints a join token."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import re
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


_SECRET_PARAMS = re.compile(r"([?&](?:token|access_token)=)[^&#]*", re.IGNORECASE)


def redact(path: str) -> str:
    """A request path with the values of token-like query parameters hidden."""
    return _SECRET_PARAMS.sub(r"\1[redacted]", path)


class RedactTokens(logging.Filter):
    """Keeps join tokens out of the access log even when an old link carries one in
    its query string (the app's own links keep them in the fragment, which browsers
    never send)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access logs (client, method, path, http version, status).
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact(args[2]), *args[3:])
        return True


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from web.app import create_app

    settings = _settings(args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    ssl = {}
    if settings.tls_cert and settings.tls_key:
        ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws_max_size=256 * 1024 + 1024,
        # Signaling messages are small; compressing each for each of 190 sockets cost
        # the hub a few percent of a core in a join storm, and every socket a zlib
        # context of its own (~300 KB).
        ws_per_message_deflate=False,
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


ADMIN_PASSWORD_ENV = "HUB_ADMIN_PASSWORD"


def _admin_password(username: str) -> str:
    """From the environment, else asked twice on the terminal: never an argument (it
    would stay in the shell's history and in every process listing)."""
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise ValueError(f"set {ADMIN_PASSWORD_ENV} or run this on a terminal to be asked")
    password = getpass.getpass(f"password for {username}: ")
    if getpass.getpass("again: ") != password:
        raise ValueError("the two passwords differ")
    return password


def admin_create(args: argparse.Namespace) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from scheduler.accounts import check_password, create_admin

    password = _admin_password(args.username)
    check_password(password)  # before anything is created on disk
    settings = _settings(args)

    async def create() -> str:
        engine = create_async_engine(settings.resolved_database_url())
        try:
            account = await create_admin(engine, args.username, password)
        finally:
            await engine.dispose()
        return account.username

    name = asyncio.run(create())
    print(f"created center administrator {name}; log in at the hub's address (/)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="practice-hub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="run the hub")
    run.add_argument("--host", help="listen address (HUB_HOST, default 127.0.0.1)")
    run.add_argument("--port", type=int, help="HTTP port (HUB_PORT, default 8080)")
    run.add_argument("--data-dir", type=Path, help="data directory (HUB_DATA_DIR, default ./data)")
    run.add_argument("--redis-url", help="share state through Redis (HUB_REDIS_URL)")
    run.set_defaults(func=serve)

    admin = commands.add_parser("admin", help="manage center administrators")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_commands.add_parser(
        "create",
        help="create a center administrator",
        description=f"The password comes from {ADMIN_PASSWORD_ENV} or is asked for on the "
        "terminal; it must be at least 10 characters.",
    )
    create.add_argument("--username", required=True)
    create.add_argument(
        "--data-dir", type=Path, help="data directory (HUB_DATA_DIR, default ./data)"
    )
    create.set_defaults(func=admin_create)

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
    except KeyboardInterrupt:
        parser.exit(130, "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
