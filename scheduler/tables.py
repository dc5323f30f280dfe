"""The scheduler's durable records, in one place (its own MetaData, tables prefixed
``scheduler_`` so they share a database with other packages without clashing)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC instant stored as a naive UTC timestamp: SQLite keeps no offset, so
    both databases store the same thing and every value read back is aware UTC."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware instant is required")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


sites = sa.Table(
    "scheduler_sites",
    metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    # No foreign key: a CSV import rewrites parents of many rows at once and the whole
    # tree is validated in Python before anything is written.
    sa.Column("parent", sa.String(32), nullable=True, index=True),
    sa.Column("region", sa.String(200), nullable=False, default=""),
    sa.Column("contact_name", sa.String(100), nullable=False, default=""),
    sa.Column("contact_phone", sa.String(50), nullable=False, default=""),
)

accounts = sa.Table(
    "scheduler_accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(100), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(300), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("site", sa.String(32), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # A disabled account cannot log in, and its logins and API tokens stop working.
    sa.Column("disabled", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
)

logins = sa.Table(
    "scheduler_logins",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column(
        "account_id",
        sa.Integer,
        sa.ForeignKey("scheduler_accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

api_tokens = sa.Table(
    "scheduler_api_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column(
        "account_id",
        sa.Integer,
        sa.ForeignKey("scheduler_accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("label", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

sessions = sa.Table(
    "scheduler_sessions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("title", sa.String(300), nullable=False),
    sa.Column("theme", sa.String(16), nullable=False),
    sa.Column("host", sa.String(32), nullable=False),
    sa.Column("audience_kind", sa.String(16), nullable=False),
    sa.Column("audience_codes", sa.JSON, nullable=False),
    sa.Column("start", UTCDateTime, nullable=False),
    sa.Column("end", UTCDateTime, nullable=False),
    # When the last occurrence ends (NULL: never), so "what overlaps now" is one query.
    sa.Column("series_end", UTCDateTime, nullable=True, index=True),
    sa.Column("repeat", sa.String(16), nullable=False, default="none"),
    sa.Column("weekdays", sa.JSON, nullable=False),
    sa.Column("until", sa.Date, nullable=True),
    sa.Column("count", sa.Integer, nullable=True),
    sa.Column("record", sa.Boolean, nullable=False, default=False),
    sa.Column("publish", sa.Boolean, nullable=False, default=False),
    sa.Column("live_households", sa.Boolean, nullable=False, default=False),
    sa.Column("restream_urls", sa.JSON, nullable=False),
    sa.Column("layout", sa.String(16), nullable=False, default="lecturer"),
    sa.Column("status", sa.String(16), nullable=False, default="scheduled"),
    sa.Column("created_by", sa.Integer, nullable=True),
)

runner_steps = sa.Table(
    "scheduler_runner_steps",
    metadata,
    sa.Column("session_id", sa.Integer, primary_key=True),
    sa.Column("occurrence_start", UTCDateTime, primary_key=True),
    sa.Column("step", sa.String(32), primary_key=True),
    sa.Column("done_at", UTCDateTime, nullable=False),
    sa.Column("holder", sa.String(100), nullable=False),
)


async def create_tables(engine: AsyncEngine) -> None:
    """Create the scheduler's tables that do not exist yet (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


async def drop_tables(engine: AsyncEngine) -> None:
    """Drop the scheduler's tables (and only them)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
