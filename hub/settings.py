"""Settings from the environment (prefix ``HUB_``), overridable from the CLI."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class IceServer(BaseSettings):
    """One STUN or TURN server handed to aiortc and to browsers."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore")

    host: str = "127.0.0.1"
    """Address the HTTP server listens on."""
    port: int = 8080
    data_dir: Path = Path("data")
    """The SQLite file, the generated secret, live HLS, and (without ``media_dir``)
    recordings and the library live here."""
    media_dir: Path | None = None
    """Recordings and the digital library; in a cluster, one directory every node mounts
    (NFS). Unset: in ``data_dir``. Live HLS stays in ``data_dir`` (the node serving it)."""
    secret: str | None = None
    """Signs join tokens. When unset, one is generated once into ``data_dir/secret``."""
    redis_url: str | None = None
    """Set to share state between nodes; unset means the in-memory Store/Bus."""
    database_url: str | None = None
    """Async SQLAlchemy URL (``postgresql+psycopg://…``); unset means SQLite in ``data_dir``."""
    node_id: str | None = None
    """This process's name in a cluster; generated when unset."""
    node_url: str | None = None
    """Where clients reach this node directly (``http://10.0.0.5:8080``): a node asked
    about a room another node holds sends the client there. Unset: from ``host``,
    ``port`` and whether it serves TLS."""
    ice_servers: list[IceServer] = Field(default_factory=list)
    """STUN/TURN servers (JSON). Empty by default: nothing outside the intranet is needed."""
    turn_urls: list[str] = Field(default_factory=list)
    """TURN servers (JSON list of ``turn:``/``turns:`` URLs) handed to clients with
    short-lived credentials made from :attr:`turn_secret`."""
    turn_secret: str | None = None
    """coturn's ``static-auth-secret`` (``use-auth-secret``)."""
    turn_ttl: int = Field(8 * 3600, ge=60)
    """Seconds a TURN credential lasts: coturn checks it again when an allocation is
    refreshed, so it outlasts a day's longest session."""
    ice_gather_addresses: list[str] = Field(default_factory=list)
    """Local addresses the hub gathers ICE candidates on; empty means every interface."""
    ice_announce_address: str | None = None
    """Address put first in the hub's candidates, for a hub behind NAT (LiveKit's node IP)."""
    udp_port: int | None = Field(None, ge=1, le=65535)
    """The one UDP port every peer connection's media uses (on each gather address),
    like LiveKit's ``rtc.udp_port``: the firewall opens this port only. Unset, each
    peer connection takes a port of its own (any of the ephemeral range)."""
    room_empty_timeout: float = 30.0
    """Seconds an empty room stays open before it closes."""
    peer_silence_timeout: float = Field(default=30.0, ge=3.0)
    """Seconds a connected peer may send nothing the hub can authenticate (media, RTCP,
    ICE checks, answers to the hub's) before its connection fails: how a publisher or
    viewer that went away without a word is noticed. 30 s is RFC 7675's consent
    timeout; a live publisher sends media many times a second, a browser checks every
    few seconds."""
    publisher_stall_timeout: float = Field(2.0, gt=0)
    """Seconds without a packet after which a track on stage that was flowing counts
    as stalled: the room is told (``stalled`` on the publication) and the console
    says so; it clears when packets flow again."""
    peer_connect_timeout: float = Field(15.0, gt=0)
    """Seconds a WHIP or WHEP peer connection has to connect. No websocket tells the hub
    such a participant is gone: one not connected by then, or whose connection fails or
    closes, leaves its room."""
    room_max_participants: int = Field(400, ge=1)
    """Participants of every kind in one room: the county's 191 sites with room to
    spare, WHEP households included. A site coming back replaces itself, so a full
    room never keeps out a reconnecting site."""
    room_max_viewers: int = Field(100, ge=0)
    """WHEP households in one room: WebRTC is for small audiences (live HLS carries
    the rest), and the sites keep at least the difference to the room's cap."""
    whep_per_address: int = Field(50, ge=0)
    """Open WHEP sessions from one address: the households of a village share one
    address, a stranger's script is held to that many."""
    anonymous_whep_per_minute: int = Field(30, ge=1)
    """New anonymous WHEP sessions one address may open a minute, as many at once: a
    village's households arriving together get in; a loop is answered 429."""
    max_media_per_offer: int = Field(16, ge=1)
    """m-lines an offer may carry (a browser publishes 3, the watch page offers 4):
    each costs the hub a transceiver and its memory."""
    hls_players_per_address: int = Field(200, ge=1)
    """Live HLS players one address adds to the household count (each counted by the
    id its page keeps). A village's households share one address; a stranger cannot
    inflate the count beyond this."""
    join_timeout: float = Field(10.0, gt=0)
    """Seconds a new websocket has to send a valid ``join``; then it is closed."""
    websockets_per_address: int = Field(400, ge=1)
    """Open websockets from one address. Generous: 190 stations may sit behind one NAT
    address of the county intranet, and a site reconnecting holds two for a moment."""
    signaling_rate: float = Field(20.0, gt=0)
    signaling_burst: int = Field(100, ge=1)
    """Messages one websocket may send: ``signaling_burst`` at once (a join with its
    offer and trickled candidates is a few dozen), then ``signaling_rate`` a second.
    A message over it is dropped and answered ``rate_limited``; a socket that has
    more than a burst dropped without pausing until the bucket is full is closed."""
    chat_per_minute: int = Field(20, ge=1)
    """Chat messages one participant may send a minute, as many at once: each goes to
    every participant of the room."""
    view_max_tiles: int = Field(100, ge=1, le=1000)
    """Sids a console's ``view`` may list as tiles, and as sites it listens to: a
    wall's page (25 by default) with room to spare."""
    webhook_urls: list[str] = Field(default_factory=list)
    """JSON list of URLs that receive session notices and escalations (POST, JSON)."""
    login_checks: int = Field(2, ge=1)
    """Password checks (argon2, deliberately slow) run at once; more logins wait a few
    seconds, then are asked to retry (503): a burst of logins cannot take every core
    from the media."""
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    """Bytes a request body may hold (JSON, a CSV of the county's sites, SDP): counted
    while it arrives, refused with 413 past it, whatever its Content-Length says."""
    max_upload_bytes: int = Field(4 * 1024**3, ge=1024 * 1024)
    """Bytes of a video uploaded to the library (an administrator's): a 1-hour
    recording at 8 Mbps is about 3.6 GB."""
    metrics_token: str | None = None
    """``/metrics`` wants ``Authorization: Bearer <this>`` and then adds the per-room and
    per-participant series; unset, it serves node-wide figures only, to anyone."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    """Serve HTTPS directly: browsers give the camera only to secure origins."""

    @model_validator(mode="after")
    def _turn_complete(self) -> Settings:
        # Half a TURN configuration would hand browsers servers they cannot use.
        if self.turn_urls and not self.turn_secret:
            raise ValueError("HUB_TURN_URLS needs HUB_TURN_SECRET (coturn's static-auth-secret)")
        if self.turn_secret is not None and len(self.turn_secret) < 16:
            raise ValueError("HUB_TURN_SECRET must be at least 16 characters")
        for url in self.turn_urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"HUB_TURN_URLS: {url!r} is not a turn: or turns: URL")
        return self

    def private_data_dir(self) -> Path:
        """The data dir, created readable by the hub's user only (it holds the token
        secret, password hashes and CSRF tokens); an existing one is left as it is."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.data_dir

    def resolved_node_url(self) -> str:
        if self.node_url:
            return self.node_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def resolved_media_dir(self) -> Path:
        return self.media_dir if self.media_dir is not None else self.data_dir

    def resolved_secret(self) -> str:
        """The token secret: configured, or generated once and kept in the data dir."""
        if self.secret:
            if len(self.secret) < 16:
                raise ValueError("HUB_SECRET must be at least 16 characters")
            return self.secret
        path = self.private_data_dir() / "secret"
        if not path.exists():
            # Written whole to a file that is private from its creation, then linked
            # into place: a process starting at the same time reads one whole secret.
            draft = path.with_name(f"secret.{secrets.token_hex(8)}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as file:
                    file.write(secrets.token_urlsafe(32))
                os.link(draft, path)
            except FileExistsError:
                pass  # another process was first: use its secret
            finally:
                draft.unlink()
        return path.read_text().strip()

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        path = self.private_data_dir() / "hub.sqlite3"
        # SQLite would create it (and its journal, with the same mode) readable by all.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        return f"sqlite+aiosqlite:///{path.resolve()}"
