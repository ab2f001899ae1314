"""The store's Lua library: its source, its name per version, and loading it into a server.

The library (``store/lua/*.lua``, in name order) is loaded once with ``FUNCTION LOAD`` and
called with ``FCALL``. It is named per version (``dramatiq_reliable_v<N>``, its functions
``dramatiq_reliable_v<N>_apply`` …), so during a rolling upgrade two versions coexist on one
server and each process calls its own: a process never runs another version's code. Bump
:data:`VERSION` whenever the op schema or the stored format changes incompatibly.

Two builds of one version (the source changed without a bump) differ in their digest: the
process that loads its build replaces the other's, and says so in one line.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from functools import lru_cache
from importlib import resources
from typing import Any

from ..errors import StoreError

logger = logging.getLogger("dramatiq_reliable.store")

#: The library's version; part of its name and of its functions' names.
VERSION = 3
#: Every version's library name starts with this.
FAMILY = "dramatiq_reliable_v"
NAME = f"{FAMILY}{VERSION}"
APPLY = f"{NAME}_apply"
KINDS = f"{NAME}_kinds"
SOURCE = f"{NAME}_source"
#: What a server needs for Redis Functions.
REQUIREMENT = "Redis >= 7.0 or Valkey >= 7.2 (Redis Functions)"


@lru_cache(maxsize=1)
def body() -> str:
    """The library's Lua, the files of ``store/lua`` in name order."""
    folder = resources.files(__package__).joinpath("lua")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".lua"))
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names)


@lru_cache(maxsize=1)
def digest() -> str:
    """A short digest of the library's source (two builds of one version differ in it)."""
    return hashlib.sha1(body().encode()).hexdigest()[:12]


@lru_cache(maxsize=1)
def code() -> str:
    """What ``FUNCTION LOAD`` gets: the shebang line naming the library, then its source."""
    return f"#!lua name={NAME}\nlocal LIB, SOURCE = '{NAME}', '{digest()}'\n{body()}"


def missing(exc: BaseException) -> bool:
    """Whether a server error says the function is not loaded (after a restart or FLUSHALL)."""
    return "function not found" in str(exc).lower()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Loader:
    """Loads the library into one server, once per process (and again when it went missing)."""

    def __init__(self, url: str, *, embedded: bool = False) -> None:
        self.url = url
        #: The embedded server (``MemoryStore``) has Functions and no ``INFO``.
        self.embedded = embedded
        self._lock = threading.Lock()
        self._told: set[str] = set()

    def check_version(self, client: Any) -> None:
        """Refuse a server without Redis Functions, in one line."""
        info = client.info("server")
        version = str(info.get("redis_version", "0"))
        valkey = info.get("valkey_version")
        try:
            major = int(version.split(".", maxsplit=1)[0])
        except ValueError:
            major = 0
        if major < 7:
            what = f"Valkey {valkey}" if valkey else f"Redis {version}"
            raise StoreError(f"store {self.url} runs {what}; dramatiq-reliable needs {REQUIREMENT}")

    def ensure(self, client: Any) -> None:
        """Load this version's library unless the server has this very build of it."""
        with self._lock:
            if not self.embedded:
                self.check_version(client)
            others: list[str] = []
            loaded: str | None = None
            for lib in client.function_list(library=FAMILY + "*"):
                fields = {_text(k): v for k, v in (lib.items() if isinstance(lib, dict) else _pairs(lib))}
                name = _text(fields.get("library_name", ""))
                if name == NAME:
                    loaded = _text(client.fcall(SOURCE, 0))
                elif name.startswith(FAMILY):
                    others.append(name)
            for name in others:
                if name not in self._told:
                    self._told.add(name)
                    _say_other(self.url, name)
            if loaded == digest():
                return
            if loaded is not None:
                logger.warning(
                    "Store %s had another build of %s loaded (source %s); replacing it with this one (%s).",
                    self.url,
                    NAME,
                    loaded,
                    digest(),
                )
            client.function_load(code(), replace=True)


def _version(name: str) -> int | None:
    tail = name[len(FAMILY) :]
    return int(tail) if tail.isdigit() else None


def _say_other(url: str, name: str) -> None:
    """Say, once, that the server has another version's library too: an older one is what a
    rolling upgrade leaves (info); a newer one means this process runs an older release than
    another process of the fleet (warning). Each version calls its own functions: they never mix."""
    other = _version(name)
    if other is not None and other < VERSION:
        logger.info(
            "Store %s also has library %s loaded (an older dramatiq-reliable's); this process calls its own, %s. "
            "Once no process of that version runs, FUNCTION DELETE %s frees it.",
            url,
            name,
            NAME,
            name,
        )
    else:
        logger.warning(
            "Store %s also has library %s loaded (a newer dramatiq-reliable uses it); this process calls its own, %s; "
            "upgrade it to the fleet's release.",
            url,
            name,
            NAME,
        )


def _pairs(flat: list[Any]) -> list[tuple[Any, Any]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
