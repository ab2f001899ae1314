"""The Python stack of another thread, as stored in a stuck job's record."""

from __future__ import annotations

import gc
import sys
import traceback
from typing import Any

#: Frames kept at most (the innermost ones: that is where a job hangs).
MAX_FRAMES = 40
#: Longest source line kept per frame (characters).
MAX_CODE = 200


def thread_stack(ident: int, *, limit: int = MAX_FRAMES) -> list[dict[str, Any]] | None:
    """The frames of the thread ``ident``, outermost first, as ``{file, line, function, code}``.

    Returns ``None`` if no such thread runs. A thread blocked in C code (a socket read,
    ``time.sleep``) shows the Python line that called it as its innermost frame.
    """
    # CPython 3.11 holds its thread-list lock while sys._current_frames() allocates: a garbage
    # collection there can run a finalizer that lets another thread take the GIL and then wait
    # for that lock, a deadlock. Later CPythons pause the collector around the call; so do we.
    paused = gc.isenabled()
    gc.disable()
    try:
        frame = sys._current_frames().get(ident)
    finally:
        if paused:
            gc.enable()
    if frame is None:
        return None
    try:
        summary = traceback.extract_stack(frame, limit=limit)
    finally:
        del frame
    return [
        {
            "file": item.filename,
            "line": item.lineno or 0,
            "function": item.name,
            "code": (item.line or "").strip()[:MAX_CODE],
        }
        for item in summary
    ]


def where(stack: list[dict[str, Any]] | None) -> str:
    """``"file.py:12 in fn: code"`` for the innermost frame of ``stack``."""
    if not stack:
        return "an unknown place (the thread has no Python frames)"
    top = stack[-1]
    text = f"{top['file']}:{top['line']} in {top['function']}"
    return f"{text}: {top['code']}" if top.get("code") else text
