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
    import hub._fastpath_py as _impl

    NATIVE = False
else:
    try:
        import hub._fastpath as _impl

        NATIVE = True
    except ImportError:
        import hub._fastpath_py as _impl

        NATIVE = False

BUFFER_SIZE = _impl.BUFFER_SIZE
DownTrackCore = _impl.DownTrackCore
SrtpSocket = _impl.SrtpSocket
configure = _impl.configure
fanout = _impl.fanout
unprotect = _impl.unprotect
unprotect_rtcp = _impl.unprotect_rtcp

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
