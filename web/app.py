"""The composition root: ``create_app(settings)`` builds every part; the lifespan
starts them and closes them in reverse order. No import-time singletons."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cluster.router import open_router
from cluster.store import open_store_bus
from hub.ids import RoomName
from hub.metrics import metrics_router
from hub.rooms_api import rooms_router
from hub.service import Hub
from hub.settings import Settings
from hub.signaling import signaling_router
from hub.whip import whip_router
from media.hls import HlsPackager
from media.jobs import JobRunner
from media.library import Library
from media.library import create_tables as create_library_tables
from media.library_http import UPLOAD_FRAMING, UPLOADS_PATH, library_router
from media.live_http import live_router
from media.processing import Processor
from scheduler.accounts import Accounts, Auth
from scheduler.command_http import CommandCenter, command_router
from scheduler.http import scheduler_router
from scheduler.runner import Runner, WebhookNotifier
from scheduler.schedule import Schedule
from scheduler.sites import Sites
from scheduler.tables import create_tables as create_scheduler_tables
from web.api_docs import api_docs_router
from web.body_limit import BodyLimit
from web.errors import UnicodeJson, validation_error
from web.glue import HubRoomControl, RecordingsToLibrary, RoutedRoomControl, admin_check
from web.library_pages import library_pages_router
from web.pages import pages_router
from web.room_routing import RoomRouting
from web.security_headers import SecurityHeaders


def create_engine_for(settings: Settings) -> AsyncEngine:
    return create_async_engine(settings.resolved_database_url(), pool_pre_ping=True)


def create_app(settings: Settings) -> FastAPI:
    settings.private_data_dir()
    engine = create_engine_for(settings)
    # Without Redis, the Store's documents (rooms' state) are kept in the data dir, so a
    # restarted hub finds them.
    documents = settings.private_data_dir() / "store.json"
    store, bus = open_store_bus(settings.redis_url, documents=documents)
    hub = Hub(settings, store, bus)
    auth = Auth(
        Accounts(engine, concurrent_checks=settings.login_checks),
        secure_cookies=True if settings.tls_cert else None,
    )
    library_dir = settings.resolved_media_dir() / "library"
    library = Library(engine, library_dir)
    jobs = JobRunner(engine, library, Processor(library_dir))
    recordings = RecordingsToLibrary(library, jobs, store)
    hub.on_recorded = recordings.recorded
    webhooks = WebhookNotifier(settings.webhook_urls) if settings.webhook_urls else None
    command = CommandCenter(
        engine=engine, store=store, bus=bus, notifier=webhooks, node=hub.node_id
    )
    sites = Sites(engine)
    router = open_router(settings.redis_url is not None, store, hub.node_id)
    room_control = RoutedRoomControl(
        HubRoomControl(hub, recordings, sites), router, bus, hub.node_id
    )
    runner = Runner(engine, room_control, command.notifier, store, holder=hub.node_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            stack.push_async_callback(store.close)
            stack.push_async_callback(bus.close)
            await create_scheduler_tables(engine)
            await create_library_tables(engine)
            await jobs.start()
            stack.push_async_callback(jobs.close)
            await hub.start()
            stack.push_async_callback(hub.close)
            # Other nodes' runners ask this node for its rooms' actions (before hub.close:
            # a room closing down takes no new action).
            hub.tasks.spawn(room_control.serve(), name="room-control")
            await recordings.recover(
                settings.resolved_media_dir() / "recordings", await hub.recordings_in_progress()
            )
            await command.start()
            stack.push_async_callback(command.stop)
            if webhooks is not None:
                stack.push_async_callback(webhooks.aclose)
            runner.start()
            stack.push_async_callback(runner.stop)
            yield

    # The API's description is for administrators (web/api_docs.py), not for anyone.
    app = FastAPI(
        title="Practice Hub", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    # The last added is the outermost: every answer gets the security headers, and
    # the JSON check reads a body already counted. A request about a room held by
    # another node is sent there before its body is read.
    app.add_middleware(UnicodeJson)
    app.add_middleware(RoomRouting, hub=hub, router=router)
    app.add_middleware(
        BodyLimit,
        default=settings.max_body_bytes,
        limits=[("POST", UPLOADS_PATH, settings.max_upload_bytes + UPLOAD_FRAMING)],
    )
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.state.settings = settings
    app.state.engine = engine
    app.state.hub = hub
    app.state.room_control = room_control
    app.include_router(signaling_router(hub))
    app.include_router(whip_router(hub))
    app.include_router(rooms_router(hub))
    app.include_router(metrics_router(hub))

    def packager(room: str) -> HlsPackager | None:
        found = hub.rooms.get(RoomName(room))
        return found.media.live if found is not None else None

    def hls_player(room: str, address: str, player: str | None) -> None:
        found = hub.rooms.get(RoomName(room))
        if found is not None:
            found.media.note_hls_player(address, player)

    app.include_router(live_router(packager, hls_player))
    app.include_router(
        library_router(
            library,
            jobs,
            library_dir=library_dir,
            is_admin=admin_check(auth),
            max_upload_bytes=settings.max_upload_bytes,
        )
    )
    app.include_router(scheduler_router(auth, sites, Schedule(engine), runner.wake))
    app.include_router(
        command_router(
            auth=auth, center=command, issue_token=hub.signer.issue, end_occurrence=runner.end_now
        )
    )
    app.include_router(api_docs_router(auth, app.openapi))
    app.include_router(pages_router())
    app.include_router(library_pages_router())
    return app
