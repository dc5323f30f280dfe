"""Fails loudly if the pinned aiortc/aioice move the internals the hub relies on."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import aioice.ice

from hub.aiortc_internals import (
    EXTRA_H264_PROFILES,
    PINNED,
    check_internals,
    install_h264_profiles,
    restrict_host_addresses,
)


async def test_pinned_internals_are_all_there() -> None:
    await check_internals()


def test_pyproject_pins_the_same_versions() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    dependencies = project["project"]["dependencies"]
    for package, version in PINNED.items():
        assert f"{package}=={version}" in dependencies
        assert importlib.metadata.version(package) == version


def test_h264_profiles_install_once_with_unique_payload_types() -> None:
    from aiortc.codecs import CODECS

    install_h264_profiles()
    install_h264_profiles()
    video = CODECS["video"]
    profiles = [str(c.parameters.get("profile-level-id")) for c in video if c.name == "H264"]
    for profile in EXTRA_H264_PROFILES:
        assert profiles.count(profile) == 1
    payload_types = [c.payloadType for kind in CODECS.values() for c in kind]
    assert len(payload_types) == len(set(payload_types))


async def test_gathering_follows_the_configured_addresses() -> None:
    from hub.peers import make_peer_connection

    restrict_host_addresses(["127.0.0.1"])
    pc = make_peer_connection([])
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    candidates = [
        line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")
    ]
    assert candidates and all(" 127.0.0.1 " in c for c in candidates)
    assert not any(" srflx " in c for c in candidates)  # no STUN server was asked
    await pc.close()
    restrict_host_addresses([])
    assert aioice.ice.get_host_addresses is not None
    restrict_host_addresses(["127.0.0.1"])
