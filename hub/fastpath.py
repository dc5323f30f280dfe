"""The fan-out's per-copy work: rewrite, protect and send one packet to every
subscriber in one call; and unprotecting what publishers send.

``hub/_fastpath.c`` when it was built (``pip install`` compiles it where a C compiler
is at hand), else ``hub/_fastpath_py.py``: the same names and behaviour in Python,
slower per copy. ``HUB_FASTPATH=python`` in the environment chooses the Python one
even so (to compare them, or to rule the C one out). :data:`NATIVE` says which runs
(``/metrics`` too); under ``CI=true`` a test requires the C one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Type checking sees the Python twin: the C module has the same names and signatures.
if TYPE_CHECKING or os.environ.get("HUB_FASTPATH", "c") == "python":
    from hub._fastpath_py import (
        BUFFER_SIZE,
        DownTrackCore,
        SrtpSocket,
        configure,
        fanout,
        unprotect,
        unprotect_rtcp,
    )

    NATIVE = False
else:
    try:
        from hub._fastpath import (
            BUFFER_SIZE,
            DownTrackCore,
            SrtpSocket,
            configure,
            fanout,
            unprotect,
            unprotect_rtcp,
        )

        NATIVE = True
    except ImportError:
        from hub._fastpath_py import (
            BUFFER_SIZE,
            DownTrackCore,
            SrtpSocket,
            configure,
            fanout,
            unprotect,
            unprotect_rtcp,
        )

        NATIVE = False

__all__ = [
    "BUFFER_SIZE",
    "NATIVE",
    "DownTrackCore",
    "SrtpSocket",
    "configure",
    "fanout",
    "unprotect",
    "unprotect_rtcp",
]
