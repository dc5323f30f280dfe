"""Durable records of the command side: attendance, roll-call answers, directives and
escalations. Own MetaData, tables prefixed ``command_``, so they share the scheduler's
database without touching its schema."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler.tables import UTCDateTime

metadata = sa.MetaData()

presence_intervals = sa.Table(
    "command_presence_intervals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.Integer, nullable=False),
    sa.Column("occurrence_start", UTCDateTime, nullable=False),
    sa.Column("room", sa.String(64), nullable=False, index=True),
    sa.Column("site", sa.String(32), nullable=False),
    sa.Column("joined_at", UTCDateTime, nullable=False),
    # NULL while the site is still in the room.
    sa.Column("left_at", UTCDateTime, nullable=True),
    sa.Index("command_presence_open", "room", "site", "left_at"),
)

rollcall_answers = sa.Table(
    "command_rollcall_answers",
    metadata,
    sa.Column("rollcall", sa.String(32), primary_key=True),
    sa.Column("site", sa.String(32), primary_key=True),
    sa.Column("session_id", sa.Integer, nullable=False),
    sa.Column("occurrence_start", UTCDateTime, nullable=False),
    sa.Column("room", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

directives = sa.Table(
    "command_directives",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("title", sa.String(300), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("sender_account", sa.Integer, nullable=False),
    # The sender's site (None for a center administrator): who may follow it up.
    sa.Column("sender_site", sa.String(32), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # A target that has not read it this many minutes after it was sent is escalated
    # like an absent station (NULL: never).
    sa.Column("read_within_minutes", sa.Integer, nullable=True),
)

directive_targets = sa.Table(
    "command_directive_targets",
    metadata,
    sa.Column(
        "directive_id",
        sa.Integer,
        sa.ForeignKey("command_directives.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("site", sa.String(32), primary_key=True),
    sa.Column("read_at", UTCDateTime, nullable=True),
    # Set once, by whichever node escalated it first (an UPDATE ... WHERE IS NULL).
    sa.Column("escalated_at", UTCDateTime, nullable=True, index=True),
)

escalations = sa.Table(
    "command_escalations",
    metadata,
    # The primary key is what makes an escalation happen once, even with several nodes.
    sa.Column("session_id", sa.Integer, primary_key=True),
    sa.Column("occurrence_start", UTCDateTime, primary_key=True),
    sa.Column("site", sa.String(32), primary_key=True),
    sa.Column("institute", sa.String(32), nullable=True, index=True),
    sa.Column("room", sa.String(64), nullable=False),
    sa.Column("title", sa.String(300), nullable=False),
    sa.Column("raised_at", UTCDateTime, nullable=False),
)


household_viewers = sa.Table(
    "command_household_viewers",
    metadata,
    # The most households watching one occurrence at once (WHEP and live HLS).
    sa.Column("room", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.Integer, nullable=False),
    sa.Column("occurrence_start", UTCDateTime, nullable=False),
    sa.Column("peak", sa.Integer, nullable=False),
)


async def create_tables(engine: AsyncEngine) -> None:
    """Create the command tables that do not exist yet (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


async def drop_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
