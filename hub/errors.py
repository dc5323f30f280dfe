"""The refusal every entry point (signaling, WHIP/WHEP, room API) turns into its answer."""

from __future__ import annotations


class HubError(Exception):
    """A refusal with a code from the signaling protocol and a reason for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
