"""The composition root: ``create_app(settings)`` builds every part in its lifespan
and closes them in reverse order. No import-time singletons."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hub.settings import Settings


def create_engine_for(settings: Settings) -> AsyncEngine:
    url = settings.resolved_database_url()
    return create_async_engine(url, pool_pre_ping=True)


def create_app(settings: Settings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            engine = create_engine_for(settings)
            stack.push_async_callback(engine.dispose)
            app.state.settings = settings
            app.state.engine = engine
            # --- parts are wired below, each package in its own block ---
            yield

    app = FastAPI(title="Practice Hub", lifespan=lifespan)
    return app
