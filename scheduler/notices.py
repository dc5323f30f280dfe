"""The live notice channel of each site, and the Bus plumbing the command side shares.

Every site has a Bus channel ``site:<code>``: the runner's ``session.opening`` events
(through :class:`BusNotifier`), dispatch directives and escalations are published
there, and ``GET /api/notices/stream`` relays it to the site's browser as Server-Sent
Events. Opening and closing a stream is announced on ``notice-streams`` so the
dashboard counts a site with an open stream as online, whichever node serves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from typing import Any

from cluster.store import Bus
from scheduler.runner import Notifier

STREAMS_CHANNEL = "notice-streams"
KEEPALIVE_SECONDS = 15.0


def site_channel(code: str) -> str:
    return f"site:{code}"


async def merged(
    bus: Bus, channels: Iterable[str], ready: Callable[[], None] | None = None
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(channel, message) from several channels in arrival order; ``ready`` is called
    once every subscription is active. Ends when the bus closes."""
    async with AsyncExitStack() as stack:
        subscriptions = [await stack.enter_async_context(bus.subscribe(c)) for c in channels]
        if ready is not None:
            ready()
        pending = {asyncio.ensure_future(anext(sub, None)): sub for sub in subscriptions}
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    sub = pending.pop(future)
                    message = future.result()
                    if message is None:
                        continue  # that subscription ended (the bus is closing)
                    pending[asyncio.ensure_future(anext(sub, None))] = sub
                    yield sub.channel, message
        finally:
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


class BusNotifier:
    """scheduler.runner's Notifier: publishes each event on every site's channel."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def notify(self, site_codes: set[str], event: dict[str, Any]) -> None:
        for code in sorted(site_codes):
            await self._bus.publish(site_channel(code), event)


class FanoutNotifier:
    """Several notifiers as one (the Bus for the pages, webhooks for outside systems);
    one failing does not stop the others."""

    def __init__(self, *notifiers: Notifier | None) -> None:
        self._notifiers = [n for n in notifiers if n is not None]

    async def notify(self, site_codes: set[str], event: dict[str, Any]) -> None:
        results = await asyncio.gather(
            *(n.notify(site_codes, event) for n in self._notifiers), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event (``data`` as one line of JSON)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class StreamOwner:
    """Ends every open event stream when the app stops (``close()``)."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()

    def close(self) -> None:
        self.closing.set()

    async def relay(
        self,
        messages: AsyncGenerator[bytes, None],
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> AsyncGenerator[bytes, None]:
        """``messages`` with a comment line after each ``keepalive`` seconds of
        silence (proxies close quiet connections), until ``messages`` ends or the
        owner closes. The client leaving cancels the iteration (Starlette)."""
        yield b": connected\n\n"
        next_message = asyncio.ensure_future(anext(messages, None))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {next_message, closing}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                if closing in done:
                    return
                if next_message not in done:
                    yield b": keep-alive\n\n"
                    continue
                chunk = next_message.result()
                if chunk is None:
                    return
                yield chunk
                next_message = asyncio.ensure_future(anext(messages, None))
        finally:
            next_message.cancel()
            closing.cancel()
            await asyncio.gather(next_message, closing, return_exceptions=True)
            await messages.aclose()


async def site_notices(
    bus: Bus, code: str, announce: Callable[[bool], Awaitable[None]]
) -> AsyncGenerator[bytes, None]:
    """The SSE chunks of one site's channel; ``announce(True/False)`` is awaited once
    the subscription is active and when it ends."""
    async with bus.subscribe(site_channel(code)) as messages:
        await announce(True)
        try:
            async for message in messages:
                yield sse(str(message.get("type", "notice")), message)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(announce(False))


def stream_announcer(bus: Bus, node: str | None, code: str) -> Callable[[bool], Awaitable[None]]:
    """Publishes the open/close of one stream of ``code`` on ``notice-streams``."""
    stream = secrets.token_hex(6)

    async def announce(open_: bool) -> None:
        await bus.publish(
            STREAMS_CHANNEL, {"site": code, "stream": stream, "open": open_, "node": node}
        )

    return announce
