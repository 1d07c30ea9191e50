"""Crash points for fault-injection tests.

Setting ``LOWRANK_LM_CRASH=<point>:<n>`` makes the process kill itself with SIGKILL the n-th time it
reaches ``crash_point("<point>")`` — a real, unannounced death (no cleanup, no exception handlers), at an
exact place such as half-way through a checkpoint write. In a multi-process job ``<point>:<n>@<rank>``
kills that rank alone (the launcher's ``RANK``); without ``@`` every rank that gets there dies. Unset, a
crash point costs one comparison.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("LOWRANK_LM_CRASH", "")
_SPEC, _, _RANK = _SPEC.partition("@")
_POINT, _, _N = _SPEC.partition(":")
_TARGET = int(_N) if _N.isdigit() else 1
if _RANK.isdigit() and os.environ.get("RANK", "0") != _RANK:
    _POINT = ""  # another rank is the one to die
_seen = 0


def crash_point(name: str) -> None:
    """Die here (SIGKILL) if LOWRANK_LM_CRASH names this point (and this rank) and its count is reached."""
    global _seen
    if name != _POINT:
        return
    _seen += 1
    if _seen == _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
