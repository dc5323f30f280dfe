"""``/metrics`` in the Prometheus text format, and ``/healthz``."""

from __future__ import annotations

import hmac
from dataclasses import fields
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, PlainTextResponse

from hub import fastpath
from hub.service import Hub

_HELP = {
    "packets_received": "RTP packets received from publishers",
    "packets_forwarded": "RTP packets forwarded to subscribers",
    "bytes_forwarded": "RTP bytes forwarded to subscribers",
    "keyframe_requests": "keyframe requests (PLI) sent to publishers, after coalescing",
    "keyframe_requests_coalesced": "keyframe requests folded into another",
    "nacks_received": "sequence numbers subscribers reported lost",
    "retransmissions": "packets resent from the hub's history",
    "retransmissions_declined": "NACKed packets not resent: too soon, too often, too old, "
    "over budget",
    "video_yields": "times a subscriber's video was held because its link could not carry it",
    "probes": "times a subscriber's link was probed with padding before a move up a layer",
    "probes_failed": "probes the subscriber's link could not carry (estimate fell, or loss)",
    "padding_bytes": "bytes of probing padding sent (copies of packets already sent)",
    "frames_to_sinks": "encoded frames handed to recorders and live packagers",
    "silence_withheld": "silent microphone packets (audio level 127) not forwarded, as DTX "
    "would not have sent them",
    "red_packets_received": "RED (audio/red) packets received from publishers",
    "red_packets_forwarded": "RED packets sent to subscribers that negotiated RED",
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(hub: Hub, *, per_room: bool) -> str:
    """The node's figures; ``per_room`` adds the series that name rooms and
    participants (who is where, and their links)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP practicehub_{name} {help_text}")
        lines.append(f"# TYPE practicehub_{name} {kind}")
        for labels, value in samples:
            lines.append(f"practicehub_{name}{labels} {value:g}")

    rooms = list(hub.rooms.values())
    participants = [p for r in rooms for p in r.participants.values()]
    publications = [pub for p in participants for pub in p.publications.values()]
    native = [("", float(fastpath.NATIVE))]
    metric("native_fanout", "gauge", "1: the fan-out runs in C, 0: in Python", native)
    metric("rooms", "gauge", "open rooms on this node", [("", len(rooms))])
    metric("participants", "gauge", "participants on this node", [("", len(participants))])
    metric("publications", "gauge", "published tracks", [("", len(publications))])
    metric(
        "subscriptions",
        "gauge",
        "publication-to-subscriber forwarders",
        [("", sum(len(pub.up.subscriptions) for pub in publications))],
    )
    if hub.udp_mux is not None:
        mux = hub.udp_mux
        metric(
            "udp_port_endpoints", "gauge", "ICE connections on HUB_UDP_PORT", [("", mux.endpoints)]
        )
        metric(
            "udp_port_addresses",
            "gauge",
            "remote addresses mapped on HUB_UDP_PORT",
            [("", mux.addresses)],
        )
        metric(
            "udp_port_dropped_total",
            "counter",
            "datagrams to HUB_UDP_PORT that matched no ICE connection",
            [("", mux.dropped)],
        )
    for field in fields(hub.stats):
        metric(
            f"{field.name}_total",
            "counter",
            _HELP[field.name],
            [("", getattr(hub.stats, field.name))],
        )
    if not per_room:
        return "\n".join(lines) + "\n"
    rtt: list[tuple[str, float]] = []
    loss: list[tuple[str, float]] = []
    bitrate: list[tuple[str, float]] = []
    for room in rooms:
        for p in room.participants.values():
            labels = f'{{room="{_label(room.name)}",identity="{_label(p.identity)}"}}'
            if p.link.rtt_ms is not None:
                rtt.append((labels, p.link.rtt_ms / 1000))
            if p.link.loss is not None:
                loss.append((labels, p.link.loss))
            bitrate.append((labels, p.link.bitrate_kbps * 1000))
    metric(
        "household_viewers",
        "gauge",
        "households watching (WHEP, and HLS players seen lately)",
        [(f'{{room="{_label(r.name)}"}}', r.media.household_viewers()) for r in rooms],
    )
    metric("participant_rtt_seconds", "gauge", "round-trip time to the participant", rtt)
    metric("participant_loss_ratio", "gauge", "fraction of packets the participant lost", loss)
    metric("participant_inbound_bits_per_second", "gauge", "what the participant sends", bitrate)
    return "\n".join(lines) + "\n"


def metrics_router(hub: Hub) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "node": hub.node_id, "rooms": len(hub.rooms)})

    @router.get("/metrics")
    async def metrics(authorization: Annotated[str | None, Header()] = None) -> PlainTextResponse:
        """Without ``HUB_METRICS_TOKEN``: node-wide figures for anyone. With it: every
        series, for a scraper sending ``Authorization: Bearer <token>`` only."""
        token = hub.settings.metrics_token
        if token:
            sent = (authorization or "").encode()
            if not hmac.compare_digest(sent, f"Bearer {token}".encode()):
                return PlainTextResponse(
                    "send Authorization: Bearer <HUB_METRICS_TOKEN>",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return PlainTextResponse(
            render(hub, per_room=bool(token)), media_type="text/plain; version=0.0.4"
        )

    return router
