"""The library's HTTP surface on a small app built from its router, over ASGI."""

from __future__ import annotations

import datetime
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import create_async_engine

from media.jobs import JobRunner
from media.library import ItemStatus, Library, LibraryItem, Theme, create_tables
from media.library_http import library_router
from media.processing import Processor
from tests.helpers import wait_until
from tests.test_processing import ffmpeg_make, make_recording

ADMIN = {"x-test-admin": "yes"}
MAX_UPLOAD = 400_000


async def is_admin(request: Request) -> bool:
    """Accounts are another package's business: the test decides by a header."""
    return request.headers.get("x-test-admin") == "yes"


@dataclass
class Hub:
    client: httpx.AsyncClient
    library: Library
    jobs: JobRunner
    root: Path
    recording: Path


@pytest.fixture(scope="session")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One recording for every test: processing only reads it."""
    return make_recording(tmp_path_factory.mktemp("http-recording"))


@pytest.fixture
async def hub(tmp_path: Path, recording: Path) -> AsyncIterator[Hub]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'hub.sqlite3'}")
    await create_tables(engine)
    library_dir = tmp_path / "library"
    library = Library(engine, library_dir)
    jobs = JobRunner(engine, library, Processor(library_dir), backoff=0.05, poll_interval=0.2)
    await jobs.start()
    app = FastAPI()
    app.include_router(
        library_router(
            library, jobs, library_dir=library_dir, is_admin=is_admin, max_upload_bytes=MAX_UPLOAD
        )
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield Hub(client, library, jobs, tmp_path, recording)
    await jobs.close()
    await engine.dispose()


async def wait_ready(hub: Hub, item_id: str) -> LibraryItem:
    async def ready() -> str | None:
        item = await hub.library.get(item_id)
        assert item is not None
        return None if item.status == ItemStatus.READY else f"item is {item.status}"

    await wait_until(ready, timeout=30)
    item = await hub.library.get(item_id)
    assert item is not None
    return item


async def catalog_item(hub: Hub, *, published: bool = True) -> LibraryItem:
    """An item in the catalog, still processing (no files)."""
    return await hub.library.create(
        title="乡村振兴政策解读",
        theme=Theme.THEORY,
        date=datetime.date(2026, 5, 1),
        site="C01",
        tags=["乡村振兴"],
        published=published,
    )


async def processed_item(hub: Hub, *, published: bool = True) -> LibraryItem:
    """A real recording, processed by the real runner."""
    item = await catalog_item(hub, published=published)
    await hub.jobs.submit(item.id, "recording", [hub.recording])
    return await wait_ready(hub, item.id)


def h264_mp4(path: Path) -> Path:
    ffmpeg_make(
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-f", "lavfi",
        "-i", "sine=sample_rate=48000", "-t", "2", "-c:v", "libx264", "-preset", "veryfast",
        "-pix_fmt", "yuv420p", "-c:a", "aac", str(path),
    )  # fmt: skip
    return path


def upload_form(**overrides: str) -> dict[str, str]:
    form = {"title": "健身操教学", "theme": "fitness", "date": "2026-05-02", "tags": "健身, 老年人"}
    form.update(overrides)
    return form


# --- JSON API ----------------------------------------------------------------------


async def test_search_lists_published_items_with_their_urls(hub: Hub) -> None:
    item = await processed_item(hub)
    r = await hub.client.get("/api/library", params={"q": "振兴", "theme": "theory"})
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 1 and body["page"] == 1
    shown = body["items"][0]
    assert shown["id"] == item.id and shown["theme_label"] == "理论宣讲"
    assert shown["hls_url"] == f"/library/{item.id}/index.m3u8"
    assert shown["tags"] == ["乡村振兴"] and abs(shown["duration"] - 4) <= 0.5
    r = await hub.client.get("/api/library", params={"q": "振兴", "theme": "fitness"})
    assert r.json()["total"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"theme": "cooking"},
        {"date_from": "2026-13-01"},
        {"date_from": "2026-06-01", "date_to": "2026-05-01"},
        {"page": "0"},
        {"page_size": "1000"},
        {"q": "a\x00b"},
    ],
)
async def test_bad_query_parameters_are_422_with_a_reason(hub: Hub, params: dict[str, str]) -> None:
    r = await hub.client.get("/api/library", params=params)
    assert r.status_code == 422 and r.json()["detail"]


async def test_unpublished_items_are_404_for_everyone_but_administrators(hub: Hub) -> None:
    item = await processed_item(hub, published=False)
    for url in (
        f"/api/library/{item.id}",
        f"/api/library/{item.id}/job",
        f"/library/{item.id}/video.mp4",
        f"/library/{item.id}/index.m3u8",
    ):
        assert (await hub.client.get(url)).status_code == 404, url
        assert (await hub.client.get(url, headers=ADMIN)).status_code == 200, url
    assert (await hub.client.post(f"/api/library/{item.id}/views")).status_code == 404
    assert (await hub.client.get("/api/library")).json()["total"] == 0
    r = await hub.client.get("/api/library", params={"include_unpublished": "true"})
    assert r.status_code == 403
    r = await hub.client.get("/api/library", params={"include_unpublished": "true"}, headers=ADMIN)
    assert r.json()["total"] == 1
    r = await hub.client.get(f"/library/{item.id}/poster.jpg", headers=ADMIN)
    assert r.headers["cache-control"] == "private, no-store"


async def test_an_administrator_patches_metadata_and_publishes(hub: Hub) -> None:
    item = await processed_item(hub, published=False)
    url = f"/api/library/{item.id}"
    change = {"title": "新标题", "theme": "science", "published": True}
    assert (await hub.client.patch(url, json=change)).status_code == 403
    r = await hub.client.patch(url, json=change, headers=ADMIN)
    assert r.status_code == 200
    assert (r.json()["title"], r.json()["theme"], r.json()["published"]) == (
        "新标题",
        "science",
        True,
    )
    assert (await hub.client.get(url)).status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"theme": "cooking"},
        {"title": None},
        {"title": ""},
        {"title": "a\x00b"},
        {"tags": ["ok", "a\x00"]},
        {"date": "soon"},
        {"owner": "x"},
    ],
)
async def test_bad_patches_are_422(hub: Hub, change: dict[str, Any]) -> None:
    item = await catalog_item(hub)
    r = await hub.client.patch(f"/api/library/{item.id}", json=change, headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"]


async def test_an_administrator_deletes_an_item_and_its_files(hub: Hub) -> None:
    item = await processed_item(hub)
    folder = hub.library.item_dir(item.id)
    assert folder.is_dir()
    assert (await hub.client.delete(f"/api/library/{item.id}")).status_code == 403
    assert (await hub.client.delete(f"/api/library/{item.id}", headers=ADMIN)).status_code == 204
    assert not folder.exists()
    assert (await hub.client.get(f"/api/library/{item.id}", headers=ADMIN)).status_code == 404


async def test_views_are_counted(hub: Hub) -> None:
    item = await catalog_item(hub)
    for _ in range(3):
        assert (await hub.client.post(f"/api/library/{item.id}/views")).status_code == 204
    assert (await hub.client.get(f"/api/library/{item.id}")).json()["views"] == 3


async def test_a_failed_job_shows_its_error_through_the_api(hub: Hub) -> None:
    item = await catalog_item(hub)
    broken = hub.root / "broken"
    broken.mkdir()
    (broken / "recording.json").write_text("{not json")
    await hub.jobs.submit(item.id, "recording", [broken])

    async def failed() -> str | None:
        r = await hub.client.get(f"/api/library/{item.id}/job")
        return None if r.json()["status"] == "failed" else r.text

    await wait_until(failed, timeout=30)
    job = (await hub.client.get(f"/api/library/{item.id}/job")).json()
    assert job["attempts"] == job["max_attempts"] == 3
    assert "bad recording manifest" in job["error"]
    assert (await hub.client.get(f"/api/library/{item.id}")).json()["status"] == "failed"


@pytest.mark.parametrize("item_id", ["nope", "0" * 32, "../../etc", "%00", "0" * 32 + "%0A"])
async def test_unknown_or_malformed_item_ids_are_404(hub: Hub, item_id: str) -> None:
    assert (await hub.client.get(f"/api/library/{item_id}", headers=ADMIN)).status_code == 404


# --- files -------------------------------------------------------------------------


async def test_hls_files_have_their_content_types_and_cache_headers(hub: Hub) -> None:
    item = await processed_item(hub)
    r = await hub.client.get(f"/library/{item.id}/index.m3u8")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert r.headers["cache-control"] == "public, max-age=60"
    segment = next(line for line in r.text.splitlines() if line.endswith(".ts"))
    r = await hub.client.get(f"/library/{item.id}/{segment}")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp2t"
    assert r.headers["cache-control"] == "public, max-age=86400"
    assert r.content[0] == 0x47  # an MPEG-TS sync byte
    r = await hub.client.get(f"/library/{item.id}/poster.jpg")
    assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"


async def test_the_mp4_answers_range_requests(hub: Hub) -> None:
    item = await processed_item(hub)
    url = f"/library/{item.id}/video.mp4"
    data = (hub.library.item_dir(item.id) / "video.mp4").read_bytes()
    size = len(data)

    whole = await hub.client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4"

    head = await hub.client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(size)

    first = await hub.client.get(url, headers={"Range": "bytes=0-99"})
    assert first.status_code == 206
    assert first.headers["content-range"] == f"bytes 0-99/{size}"
    assert first.content == data[:100]

    tail = await hub.client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert tail.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"

    rest = await hub.client.get(url, headers={"Range": f"bytes={size - 5}-"})
    assert rest.status_code == 206 and rest.content == data[-5:]

    beyond = await hub.client.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"

    garbage = await hub.client.get(url, headers={"Range": "bytes=abc"})
    assert 400 <= garbage.status_code < 500


async def test_no_request_reads_outside_the_item_folder(hub: Hub) -> None:
    item = await processed_item(hub)
    other = await processed_item(hub)
    secret = hub.root / "secret.mp4"
    secret.write_bytes(b"TOP SECRET")
    folder = hub.library.item_dir(item.id)
    os.symlink(secret, folder / "escape.mp4")
    os.symlink(hub.library.item_dir(other.id) / "video.mp4", folder / "sideways.mp4")
    base = f"/library/{item.id}"
    attempts = [
        f"{base}/../../secret.mp4",
        f"{base}/..%2F..%2Fsecret.mp4",
        f"{base}/%2e%2e%2f%2e%2e%2fsecret.mp4",
        f"{base}/%2e%2e",
        f"{base}/..",
        f"{base}/.hidden.mp4",
        f"{base}/..%5C..%5Csecret.mp4",
        f"{base}/%2Fetc%2Fpasswd",
        f"{base}//etc/passwd",
        f"{base}/escape.mp4",
        f"{base}/sideways.mp4",
        f"{base}/video.mp4%00.jpg",
        f"{base}/escape.mp4%0A",
        "/library/..%2F..%2Fsecret.mp4/video.mp4",
        f"/library/{item.id}%2F..%2F..%2F/secret.mp4",
    ]
    for url in attempts:
        r = await hub.client.get(url, headers=ADMIN)
        assert 400 <= r.status_code < 500, url
        assert b"TOP SECRET" not in r.content, url
    raw = httpx.Request("GET", f"http://hub{base}/x")
    raw.url = raw.url.copy_with(raw_path=f"{base}/../../secret.mp4".encode())
    r = await hub.client.send(raw)
    assert 400 <= r.status_code < 500 and b"TOP SECRET" not in r.content


# --- uploads -----------------------------------------------------------------------


async def test_an_administrator_uploads_a_video_which_becomes_an_item(hub: Hub) -> None:
    video = h264_mp4(hub.root / "talk.mp4")
    with video.open("rb") as f:
        r = await hub.client.post(
            "/api/library/uploads",
            data=upload_form(),
            files={"file": ("talk.mp4", f, "video/mp4")},
            headers=ADMIN,
        )
    assert r.status_code == 202, r.text
    item_id = r.json()["item"]["id"]
    assert r.json()["item"]["tags"] == ["健身", "老年人"]
    assert r.json()["job"]["status"] == "queued"
    item = await wait_ready(hub, item_id)
    assert item.theme == Theme.FITNESS and item.session_id is None
    job = await hub.client.get(f"/api/library/{item_id}/job", headers=ADMIN)
    assert (job.json()["status"], job.json()["progress"]) == ("done", 100.0)
    assert (await hub.client.get(f"/library/{item_id}/index.m3u8", headers=ADMIN)).is_success
    assert list((hub.library.library_dir / "uploads").iterdir()) == []


async def test_uploads_are_refused_with_a_clear_reason(hub: Hub) -> None:
    text_file = b"just some notes, not a video\n" * 10
    mp4 = h264_mp4(hub.root / "talk.mp4").read_bytes()

    async def post(
        files: dict[str, Any] | None, form: dict[str, str], admin: bool = True
    ) -> httpx.Response:
        return await hub.client.post(
            "/api/library/uploads", data=form, files=files, headers=ADMIN if admin else {}
        )

    r = await post({"file": ("notes.mp4", text_file, "video/mp4")}, upload_form())
    assert r.status_code == 415 and "not a video file" in r.json()["detail"]
    song = hub.root / "song.m4a"  # music with cover art: its picture is not a video
    ffmpeg_make(
        "-f", "lavfi", "-i", "sine=sample_rate=44100:duration=1", "-f", "lavfi",
        "-i", "color=red:size=64x64", "-frames:v", "1", "-map", "0", "-map", "1",
        "-c:a", "aac", "-c:v", "mjpeg", "-disposition:v:0", "attached_pic", str(song),
    )  # fmt: skip
    r = await post({"file": ("song.m4a", song.read_bytes(), "audio/mp4")}, upload_form())
    assert r.status_code == 415 and "no video stream" in r.json()["detail"]
    r = await post({"file": ("talk.mp4", mp4, "video/mp4")}, upload_form(), admin=False)
    assert r.status_code == 403
    r = await post({"file": ("talk.mp4", mp4, "video/mp4")}, upload_form(theme="cooking"))
    assert r.status_code == 422
    r = await post(None, upload_form())
    assert r.status_code == 422 and "file" in r.json()["detail"]
    big = os.urandom(MAX_UPLOAD + 1)
    r = await post({"file": ("big.mp4", big, "video/mp4")}, upload_form())
    assert r.status_code == 413
    huge = b"\0" * (MAX_UPLOAD + 2 * 1024 * 1024)  # refused from Content-Length alone
    r = await post({"file": ("huge.mp4", huge, "video/mp4")}, upload_form())
    assert r.status_code == 413
    r = await hub.client.post(
        "/api/library/uploads",
        content=b"--x\r\nbroken",
        headers={**ADMIN, "content-type": "multipart/form-data; boundary=x"},
    )
    assert 400 <= r.status_code < 500
    uploads = hub.library.library_dir / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
    assert (
        await hub.client.get("/api/library", params={"include_unpublished": "true"}, headers=ADMIN)
    ).json()["total"] == 0


async def test_the_router_refuses_a_folder_that_is_not_the_librarys(hub: Hub) -> None:
    with pytest.raises(ValueError, match="not the Library's"):
        library_router(hub.library, hub.jobs, library_dir=hub.root / "elsewhere", is_admin=is_admin)
