"""The support page: find any job by id, business key, actor or status, see why, replay.

Needs the ``web`` extra (``pip install 'dramatiq-reliable[web]'``): Starlette, Jinja2 and
uvicorn. Run it with ``dramatiq-reliable web`` (see ``docs/web.md``), or serve
:func:`create_app` with any ASGI server.
"""

from __future__ import annotations

from .app import create_app
from .security import Guard

__all__ = ["Guard", "create_app"]
