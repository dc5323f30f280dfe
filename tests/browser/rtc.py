"""getStats figures read from a page, through ``window.practiceHub`` (the page's
HubClient): what arrives on the subscriber connection, by who sent it, and what
leaves on the publisher connection, by source."""

from __future__ import annotations

from typing import Any, TypedDict

INBOUND_JS = """
async () => {
  const c = window.practiceHub && window.practiceHub.client;
  if (!c || !c.subscriber) return [];
  const report = await c.subscriber.getStats();
  const out = [];
  for (const s of report.values()) {
    if (s.type !== 'inbound-rtp') continue;
    const remote = s.mid !== undefined ? c.remoteTracks.get(s.mid) : undefined;
    out.push({
      kind: s.kind, mid: s.mid ?? null,
      participant: remote ? remote.info.participant : null,
      source: remote ? remote.info.source : null,
      framesDecoded: s.framesDecoded ?? 0,
      packetsReceived: s.packetsReceived ?? 0,
      frameWidth: s.frameWidth ?? 0,
      frameHeight: s.frameHeight ?? 0,
      samples: s.totalSamplesReceived ?? 0,
      freezeCount: s.freezeCount ?? 0,
      freezeSeconds: s.totalFreezesDuration ?? 0,
    });
  }
  return out;
}
"""

OUTBOUND_JS = """
async () => {
  const c = window.practiceHub && window.practiceHub.client;
  if (!c || !c.publisher) return [];
  const report = await c.publisher.getStats();
  const byMid = {};
  for (const [source, t] of c.transceivers) if (t.mid !== null) byMid[t.mid] = source;
  const out = [];
  for (const s of report.values()) {
    if (s.type !== 'outbound-rtp') continue;
    out.push({
      kind: s.kind, mid: s.mid ?? null, source: byMid[s.mid] ?? null, rid: s.rid ?? null,
      framesEncoded: s.framesEncoded ?? 0, packetsSent: s.packetsSent ?? 0,
      frameWidth: s.frameWidth ?? 0, frameHeight: s.frameHeight ?? 0,
    });
  }
  return out;
}
"""


class Inbound(TypedDict):
    kind: str
    mid: str | None
    participant: str | None
    source: str | None
    framesDecoded: int
    packetsReceived: int
    frameWidth: int
    frameHeight: int
    samples: int
    freezeCount: int
    freezeSeconds: float


class Outbound(TypedDict):
    kind: str
    mid: str | None
    source: str | None
    rid: str | None
    framesEncoded: int
    packetsSent: int
    frameWidth: int
    frameHeight: int


def inbound(page: Any) -> list[Inbound]:
    result: list[Inbound] = page.evaluate(INBOUND_JS)
    return result


def outbound(page: Any) -> list[Outbound]:
    result: list[Outbound] = page.evaluate(OUTBOUND_JS)
    return result


def sid_of(page: Any) -> str:
    sid = page.evaluate(
        "() => { const c = window.practiceHub && window.practiceHub.client;"
        " return c && c.self ? c.self.sid : null; }"
    )
    assert isinstance(sid, str), "page has not joined"
    return sid


def client_state(page: Any) -> str:
    state: str = page.evaluate(
        "() => { const c = window.practiceHub && window.practiceHub.client;"
        " return c ? c.state : 'none'; }"
    )
    return state


def counter(
    page: Any, kind: str, participant: str | None, source: str | None, field: str
) -> int | None:
    """The sum of ``field`` over inbound streams of ``kind`` from ``participant``
    (any if None) with ``source`` (any if None); None if there is no such stream."""
    rows = [
        r
        for r in inbound(page)
        if r["kind"] == kind
        and (participant is None or r["participant"] == participant)
        and (source is None or r["source"] == source)
    ]
    if not rows:
        return None
    values: list[Any] = [dict(r)[field] for r in rows]
    return sum(int(v) for v in values)


class Progress:
    """Tells whether an inbound counter keeps increasing between two checks."""

    def __init__(
        self, page: Any, kind: str, participant: str | None, source: str | None, field: str
    ) -> None:
        self.page = page
        self.kind = kind
        self.participant = participant
        self.source = source
        self.field = field
        self.last: int | None = None
        self.increases = 0

    def __call__(self) -> str | None:
        """None once the counter has increased twice in a row since the first read."""
        value = counter(self.page, self.kind, self.participant, self.source, self.field)
        sender = self.participant or "anyone"
        what = f"{self.kind} {self.field} from {sender} ({self.source or 'any'})"
        if value is None:
            self.last = None
            self.increases = 0
            return f"no inbound {what}"
        if self.last is not None and value > self.last:
            self.increases += 1
        elif self.last is not None:
            self.increases = 0
        self.last = value
        if self.increases >= 2:
            return None
        return f"{what} not increasing (at {value})"
