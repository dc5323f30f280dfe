"""Every JSON example of hub/PROTOCOL.md is a message of hub/messages.py: an example
that drifts from the types (or a type nobody documented) fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from hub.messages import INCOMING, OUTGOING, ParticipantInfo

PROTOCOL = Path(__file__).resolve().parent.parent / "hub" / "PROTOCOL.md"


def examples() -> dict[str, list[dict[str, Any]]]:
    """The JSON objects of each section's ```json blocks, placeholders filled in."""
    sections: dict[str, list[dict[str, Any]]] = {}
    section = ""
    participant = "{}"
    text = PROTOCOL.read_text()
    for match in re.finditer(r"^## ([^\n]+)$|^```json\n(.*?)^```", text, re.M | re.S):
        if match.group(1):
            section = match.group(1)
            continue
        block = match.group(2)
        if section == "Identifiers":
            participant = block.strip()
        # "{…}" is a participant as shown under Identifiers; ", …" more of the same.
        block = re.sub(r"\{…[a-z]*…\}|\{…\}", participant, block).replace(", …]", "]")
        decoder, at = json.JSONDecoder(), 0
        while (at := _skip_space(block, at)) < len(block):
            value, at = decoder.raw_decode(block, at)
            sections.setdefault(section, []).append(value)
    return sections


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


EXAMPLES = examples()


def _fields(model: type[BaseModel]) -> set[str]:
    return {f.validation_alias or f.alias or name for name, f in model.model_fields.items()}  # type: ignore[misc]


def test_the_examples_are_found() -> None:
    assert len(EXAMPLES["Client → hub"]) >= 15
    assert len(EXAMPLES["Hub → client"]) >= 20
    assert EXAMPLES["Identifiers"]


@pytest.mark.parametrize("example", EXAMPLES["Client → hub"], ids=lambda e: e["type"])
def test_client_examples_are_incoming_messages(example: dict[str, Any]) -> None:
    model = INCOMING[example["type"]]
    model.model_validate(example)
    assert set(example) <= _fields(model), (
        f"not in {model.__name__}: {set(example) - _fields(model)}"
    )


@pytest.mark.parametrize("example", EXAMPLES["Hub → client"], ids=lambda e: e["type"])
def test_hub_examples_are_outgoing_messages(example: dict[str, Any]) -> None:
    candidates = [m for m in OUTGOING if m.model_fields["type"].default == example["type"]]
    assert candidates, f"no outgoing type {example['type']}"
    errors: list[str] = []
    for model in candidates:
        try:
            model.model_validate(example)
            return
        except ValidationError as exc:
            errors.append(f"{model.__name__}: {exc}")
    pytest.fail("\n".join(errors))


def test_the_participant_example_is_a_participant() -> None:
    ParticipantInfo.model_validate(EXAMPLES["Identifiers"][0])


def test_every_message_type_is_documented() -> None:
    documented_in = {e["type"] for e in EXAMPLES["Client → hub"]}
    documented_out = {e["type"] for e in EXAMPLES["Hub → client"]}
    assert set(INCOMING) == documented_in
    assert {m.model_fields["type"].default for m in OUTGOING} == documented_out
