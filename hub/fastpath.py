"""The fan-out's per-copy work: rewrite, protect and send one packet to every
subscriber in one call.

``hub/_fastpath.c`` when it was built (``pip install`` compiles it where a C compiler
is at hand), else ``hub/_fastpath_py.py``: the same names and behaviour in Python,
several times slower per copy. :data:`NATIVE` says which runs; under ``CI=true`` a
test requires the C one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub._fastpath_py import BUFFER_SIZE, DownTrackCore, SrtpSocket, configure, fanout

    NATIVE: bool
else:
    try:
        from hub._fastpath import BUFFER_SIZE, DownTrackCore, SrtpSocket, configure, fanout

        NATIVE = True
    except ImportError:
        from hub._fastpath_py import BUFFER_SIZE, DownTrackCore, SrtpSocket, configure, fanout

        NATIVE = False

__all__ = ["BUFFER_SIZE", "NATIVE", "DownTrackCore", "SrtpSocket", "configure", "fanout"]
