from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import string
from typing import Any

import pytest

from hub.ids import ParticipantIdentity, RoomName
from hub.tokens import (
    MAX_TOKEN_LENGTH,
    Grant,
    Role,
    Source,
    TokenError,
    TokenSigner,
    grant_for_role,
)

SECRET = "a-test-secret-of-decent-length"
NOW = 1_780_000_000.0
ROOM = RoomName("lecture-2026-11-29")
ALL = frozenset(Source)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def jwt(header: Any, claims: Any, secret: str = SECRET, *, raw_claims: bytes | None = None) -> str:
    """A JWT signed independently of hub.tokens, as a third-party issuer would."""
    body = raw_claims if raw_claims is not None else json.dumps(claims).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def station_grant() -> Grant:
    return grant_for_role(ROOM, ParticipantIdentity("station-042"), Role.STATION, ttl=3600, now=NOW)


def valid_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "station-042",
        "name": "Station 42",
        "room": ROOM,
        "role": "station",
        "pub": True,
        "sub_ok": True,
        "mod": False,
        "src": ["camera", "microphone"],
        "exp": NOW + 60,
        "iat": NOW,
    }
    claims.update(changes)
    return claims


HS256 = {"alg": "HS256", "typ": "JWT"}


@pytest.mark.parametrize(
    ("role", "publish", "subscribe", "moderate", "chat", "sources"),
    [
        (Role.CENTER, True, True, True, True, ALL),
        (Role.INSTITUTE, True, True, False, True, ALL),
        (Role.STATION, True, True, False, True, ALL),
        (Role.VIEWER, False, True, False, False, frozenset()),
        (Role.INGEST, True, False, False, False, ALL),
    ],
)
def test_grant_for_role_gives_the_role_defaults(
    role: Role,
    publish: bool,
    subscribe: bool,
    moderate: bool,
    chat: bool,
    sources: frozenset[Source],
) -> None:
    grant = grant_for_role(ROOM, ParticipantIdentity("x"), role, ttl=60, now=NOW)
    assert (grant.can_publish, grant.can_subscribe, grant.can_moderate, grant.can_chat) == (
        publish,
        subscribe,
        moderate,
        chat,
    )
    assert grant.sources == sources
    assert all(grant.may_publish(s) == (s in sources) for s in Source)
    assert grant.expires_at == NOW + 60
    assert grant.role is role


def test_grant_for_role_names_the_participant_by_identity_unless_told() -> None:
    identity = ParticipantIdentity("inst-07")
    assert grant_for_role(ROOM, identity, Role.INSTITUTE, ttl=1).name == "inst-07"
    named = grant_for_role(ROOM, identity, Role.INSTITUTE, ttl=1, name="Chengguan Institute")
    assert named.name == "Chengguan Institute"


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("nan"), float("inf")])
def test_grant_for_role_with_a_bad_ttl_raises_value_error(ttl: float) -> None:
    with pytest.raises(ValueError):
        grant_for_role(ROOM, ParticipantIdentity("x"), Role.VIEWER, ttl=ttl)


BAD_ROOM_NAMES = [
    "",
    ".",
    "..",
    "../secret",
    "a/b",
    "a\\b",
    "/etc",
    "-lecture",
    ".hidden",
    "lecture\n",
    "lecture\x00",
    "讲座",
    "x" * 65,
]


@pytest.mark.parametrize("room", BAD_ROOM_NAMES)
def test_grant_for_role_refuses_a_room_name_that_is_not_one(room: str) -> None:
    """Room names become directories (``data/live/<room>``): only the room-name rule passes."""
    with pytest.raises(ValueError, match="room name"):
        grant_for_role(RoomName(room), ParticipantIdentity("x"), Role.VIEWER, ttl=60)


@pytest.mark.parametrize("room", ["a", "lecture-1", "s12-202612011930", "a..b", "A_b.c", "x" * 64])
def test_grant_for_role_takes_every_room_name_of_the_rule(room: str) -> None:
    assert (
        grant_for_role(RoomName(room), ParticipantIdentity("x"), Role.VIEWER, ttl=60).room == room
    )


@pytest.mark.parametrize("room", BAD_ROOM_NAMES)
def test_verify_of_a_well_signed_token_with_a_bad_room_name_raises(room: str) -> None:
    """Another issuer (a portal, a script) may sign any string as the room."""
    assert reason(jwt(HS256, valid_claims(room=room))) == "invalid claim 'room'"


def test_may_publish_needs_can_publish_and_the_source() -> None:
    grant = Grant(
        room=ROOM,
        identity=ParticipantIdentity("x"),
        name="x",
        role=Role.STATION,
        can_publish=False,
        can_subscribe=True,
        can_moderate=False,
        can_chat=False,
        sources=ALL,
        expires_at=NOW,
    )
    assert not grant.may_publish(Source.CAMERA)


@pytest.mark.parametrize("role", list(Role))
def test_verify_returns_the_issued_grant_for_every_role(role: Role) -> None:
    signer = TokenSigner(SECRET)
    grant = grant_for_role(ROOM, ParticipantIdentity("id-1"), role, ttl=600, name="Name", now=NOW)
    assert signer.verify(signer.issue(grant, now=NOW), now=NOW + 1) == grant


def test_issue_writes_a_standard_hs256_jwt() -> None:
    token = TokenSigner(SECRET).issue(station_grant(), now=NOW)
    header, claims, signature = token.split(".")
    assert unb64(header) == HS256
    assert unb64(claims) == {
        "sub": "station-042",
        "name": "station-042",
        "room": ROOM,
        "role": "station",
        "pub": True,
        "sub_ok": True,
        "mod": False,
        "chat": True,
        "src": ["camera", "microphone", "screen"],
        "exp": NOW + 3600,
        "iat": int(NOW),
    }
    expected = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    assert signature == b64(expected)


def test_verify_accepts_a_token_from_another_jwt_issuer() -> None:
    grant = TokenSigner(SECRET).verify(jwt(HS256, valid_claims(exp=int(NOW) + 60)), now=NOW)
    assert grant.sources == {Source.CAMERA, Source.MICROPHONE}
    assert grant.name == "Station 42"


@pytest.mark.parametrize(("role", "chat"), [("station", True), ("viewer", False)])
def test_a_token_without_the_chat_claim_gets_its_roles_default(role: str, chat: bool) -> None:
    """Tokens of an older hub, or of a portal, carry no ``chat``."""
    claims = valid_claims(role=role, exp=int(NOW) + 60)
    assert "chat" not in claims
    assert TokenSigner(SECRET).verify(jwt(HS256, claims), now=NOW).can_chat is chat


def test_the_chat_claim_overrides_the_role() -> None:
    quiet = TokenSigner(SECRET).verify(jwt(HS256, valid_claims(chat=False)), now=NOW)
    assert not quiet.can_chat


def reason(token: object, *, secret: str = SECRET, now: float = NOW) -> str:
    with pytest.raises(TokenError) as caught:
        TokenSigner(secret).verify(token, now=now)  # type: ignore[arg-type]
    return caught.value.reason


def test_verify_with_a_tampered_payload_raises_bad_signature() -> None:
    header, _, signature = TokenSigner(SECRET).issue(station_grant()).split(".")
    forged = b64(json.dumps(valid_claims(role="center", mod=True)).encode())
    assert reason(f"{header}.{forged}.{signature}") == "bad signature"


def test_verify_with_a_tampered_signature_raises_bad_signature() -> None:
    token = TokenSigner(SECRET).issue(station_grant())
    last = "A" if token[-1] != "A" else "B"
    assert reason(token[:-1] + last) == "bad signature"


def test_verify_with_the_wrong_secret_raises_bad_signature() -> None:
    token = TokenSigner(SECRET).issue(station_grant())
    assert reason(token, secret="another-secret-of-decent-length") == "bad signature"


def test_verify_at_or_after_expiry_raises_token_expired() -> None:
    grant = station_grant()
    token = TokenSigner(SECRET).issue(grant)
    assert TokenSigner(SECRET).verify(token, now=grant.expires_at - 0.001) == grant
    assert reason(token, now=grant.expires_at) == "token expired"


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS256", None])
def test_verify_refuses_any_algorithm_but_hs256(alg: str | None) -> None:
    token = jwt({"alg": alg, "typ": "JWT"}, valid_claims())
    assert reason(token) == "unsupported algorithm"
    unsigned = token.rsplit(".", 1)[0] + "."
    assert reason(unsigned) == "malformed token"


def test_verify_refuses_a_token_longer_than_the_limit() -> None:
    token = jwt(HS256, valid_claims(name="x" * MAX_TOKEN_LENGTH))
    assert reason(token) == "token too long"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (valid_claims(role="household"), "unknown role"),
        (valid_claims(src=["camera", "hologram"]), "unknown source"),
        (valid_claims(src=[["camera"]]), "invalid claim 'src'"),
        (valid_claims(src="camera"), "invalid claim 'src'"),
        (valid_claims(pub="yes"), "invalid claim 'pub'"),
        (valid_claims(mod=1), "invalid claim 'mod'"),
        (valid_claims(chat="yes"), "invalid claim 'chat'"),
        (valid_claims(exp=True), "invalid claim 'exp'"),
        (valid_claims(exp="tomorrow"), "invalid claim 'exp'"),
        (valid_claims(exp=10**400), "invalid claim 'exp'"),
        (valid_claims(exp=float("inf")), "invalid claim 'exp'"),
        (valid_claims(exp=float("nan")), "invalid claim 'exp'"),
        (valid_claims(iat=None), "invalid claim 'iat'"),
        (valid_claims(sub=42), "invalid claim 'sub'"),
        ({k: v for k, v in valid_claims().items() if k != "room"}, "invalid claim 'room'"),
        (["not", "an", "object"], "malformed token"),
        ("string", "malformed token"),
    ],
)
def test_verify_of_a_well_signed_token_with_bad_claims_raises(claims: Any, expected: str) -> None:
    assert reason(jwt(HS256, claims)) == expected


def mangle(rng: random.Random, token: str) -> str:
    position = rng.randrange(len(token))
    match rng.randrange(5):
        case 0:
            return token[:position] + rng.choice(string.printable) + token[position + 1 :]
        case 1:
            return token[:position] + token[position + 1 :]
        case 2:
            return token[:position] + rng.choice("._-=+/ A0\x00é") + token[position:]
        case 3:
            return token[:position]
        case _:
            parts = token.split(".")
            rng.shuffle(parts)
            return ".".join(parts)


def garbage(rng: random.Random) -> object:
    size = rng.randrange(0, 200)
    match rng.randrange(6):
        case 0:
            return "".join(rng.choice(string.printable) for _ in range(size))
        case 1:
            return rng.randbytes(size)
        case 2:
            return rng.randbytes(size).decode("latin-1")
        case 3:
            return ".".join(b64(rng.randbytes(rng.randrange(40))) for _ in range(3))
        case 4:  # a valid signature over bytes that are not JSON, or not UTF-8
            return jwt(HS256, None, raw_claims=rng.randbytes(size))
        case _:  # deeply nested JSON, signed
            depth = rng.randrange(1, 3000)
            return jwt(HS256, None, raw_claims=b"[" * depth + b"]" * depth)


def test_verify_of_random_and_mangled_input_raises_only_token_error() -> None:
    rng = random.Random(20261129)
    token = TokenSigner(SECRET).issue(station_grant())
    inputs: list[object] = [None, 42, b"", bytearray(b"a.b.c"), token.encode(), "\udcff.a.b"]
    inputs += [garbage(rng) for _ in range(300)]
    inputs += [mangle(rng, token) for _ in range(300)]
    inputs += [b64(b"[" * 3000) + "." + token.split(".", 1)[1]]
    for item in inputs:
        if item == token:
            continue
        with pytest.raises(TokenError):
            TokenSigner(SECRET).verify(item, now=NOW)  # type: ignore[arg-type]


def test_token_error_is_a_value_error_with_a_short_reason() -> None:
    error = TokenError("token expired")
    assert isinstance(error, ValueError)
    assert str(error) == error.reason == "token expired"
