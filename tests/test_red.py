"""RED (RFC 2198) payloads read without decoding: blocks, primary, retagging; and
malformed payloads give None, never an exception."""

from __future__ import annotations

import random

import pytest

from hub.red import (
    RedBlock,
    fmtp,
    red_blocks,
    red_primary,
    red_retagged,
    red_single,
    redundant_payload_types,
)


def redundant_header(payload_type: int, offset: int, length: int) -> bytes:
    """F=1, block PT (7 bits), timestamp offset (14 bits), block length (10 bits)."""
    return bytes((0x80 | payload_type,)) + ((offset << 10) | length).to_bytes(3, "big")


def red(primary: bytes, *older: tuple[int, bytes], payload_type: int = 111) -> bytes:
    """A RED payload: ``older`` (timestamp offset, data), oldest first, then ``primary``."""
    headers = b"".join(redundant_header(payload_type, o, len(d)) for o, d in older)
    return headers + bytes((payload_type,)) + b"".join(d for _, d in older) + primary


def test_a_primary_block_alone() -> None:
    payload = red(b"opus-now")
    assert payload == b"\x6fopus-now"
    assert red_blocks(payload) == [RedBlock(111, 0, b"opus-now")]
    assert red_primary(payload) == b"opus-now"


def test_redundant_blocks_come_first_with_their_offsets_and_lengths() -> None:
    payload = red(b"now", (1920, b"two-ago"), (960, b"one-ago!"))
    assert red_blocks(payload) == [
        RedBlock(111, 1920, b"two-ago"),
        RedBlock(111, 960, b"one-ago!"),
        RedBlock(111, 0, b"now"),
    ]
    assert red_primary(payload) == b"now"


def test_the_largest_offset_and_length_fit_their_bits() -> None:
    big = bytes(range(256)) * 4  # 1,024 bytes: one more than 10 bits hold
    payload = red(b"p", (0x3FFF, big[:1023]))
    assert red_blocks(payload) == [RedBlock(111, 0x3FFF, big[:1023]), RedBlock(111, 0, b"p")]


def test_retagging_names_the_receivers_opus_in_every_block() -> None:
    payload = red(b"now", (960, b"before"))
    retagged = red_retagged(payload, 96)
    assert retagged is not None
    assert [b.payload_type for b in red_blocks(retagged) or []] == [96, 96]
    assert [b.data for b in red_blocks(retagged) or []] == [b"before", b"now"]
    assert red_retagged(payload, 111) is payload  # nothing to change: no copy


def test_a_single_block_wraps_plain_opus() -> None:
    assert red_blocks(red_single(b"opus", 96)) == [RedBlock(96, 0, b"opus")]


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # nothing at all
        b"\xef",  # F set: a 4-byte header cut to one
        b"\xef\x00\x3c",  # cut to three
        redundant_header(111, 960, 4),  # headers never end (no F=0 header)
        redundant_header(111, 960, 40) + b"\x6f" + b"short",  # block longer than the rest
        redundant_header(111, 960, 3) + b"\x6f" + b"abc",  # an empty primary
        b"\x6f",  # an empty primary alone
    ],
)
def test_malformed_payloads_give_none(payload: bytes) -> None:
    blocks = red_blocks(payload)
    assert red_primary(payload) is None
    if blocks is None:
        assert red_retagged(payload, 96) is None
    else:  # well formed, but nothing to play
        assert blocks[-1].data == b""


def test_random_bytes_never_raise() -> None:
    rng = random.Random(2198)
    for _ in range(20_000):
        payload = rng.randbytes(rng.randrange(0, 40))
        blocks = red_blocks(payload)
        primary = red_primary(payload)
        retagged = red_retagged(payload, 96)
        assert (blocks is None) == (retagged is None)
        if primary is not None:
            assert blocks is not None and blocks[-1].data == primary


def test_format_parameters_name_the_wrapped_payload_type() -> None:
    assert fmtp(111) == "111/111"
    assert redundant_payload_types({"111/111": None}) == [111, 111]
    assert redundant_payload_types({"minptime": 10}) is None
    assert redundant_payload_types({"111/x": None}) is None
    assert redundant_payload_types({"300/300": None}) is None
