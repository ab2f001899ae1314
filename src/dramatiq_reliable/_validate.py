"""The checks of every option the bundle takes: middleware constructors, ``install``, actor options.

One rule per kind of value, so an option means the same everywhere:

* :func:`seconds`: a duration, a finite number > 0 (``True`` is not a number of seconds);
* :func:`count`: a size or a count, an ``int`` (not a ``bool``) within bounds;
* :func:`names`: a sequence of strings (a bare string is refused: ``("password")`` is not a tuple);
* :func:`flag`: ``True`` or ``False``;
* :func:`choice`: one of a few words.

Each raises :class:`~dramatiq_reliable.ConfigurationError` naming the option (and the actor,
``where``) with the value it got, and returns the value in its canonical type.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from .errors import ConfigurationError


def _fail(where: str | None, message: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {message}" if where else message)


def seconds(
    name: str, value: Any, *, where: str | None = None, below: float | None = None, zero: bool = False
) -> float:
    """A positive, finite number of seconds (under ``below`` if given; 0 too if ``zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero) or (below is not None and value >= below):
        kind = "a number of seconds >= 0" if zero else "a positive number of seconds"
        limit = f" under {below:g}" if below is not None else ""
        raise _fail(where, f"{name} must be {kind}{limit}, not {value!r}")
    return float(value)


def count(name: str, value: Any, *, least: int = 1, most: int | None = None, where: str | None = None) -> int:
    """An integer of at least ``least`` (and at most ``most`` if given)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least or (most is not None and value > most):
        if most is not None:
            kind = f"an integer between {least} and {most}"
        else:
            kind = "a positive integer" if least == 1 else f"an integer of at least {least}"
        raise _fail(where, f"{name} must be {kind}, not {value!r}")
    return value


def names(
    name: str, value: Any, *, where: str | None = None, example: str = "'password'", of: str = "names"
) -> tuple[str, ...]:
    """A sequence of strings (a list, tuple, set, …; not a bare string)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
        raise _fail(where, f"{name} must be a tuple of {of}, e.g. {name}=({example},), not {value!r}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise _fail(where, f"{name} must hold names (non-empty strings), not {item!r}")
    return tuple(value)


def flag(name: str, value: Any, *, where: str | None = None) -> bool:
    """``True`` or ``False``."""
    if not isinstance(value, bool):
        raise _fail(where, f"{name} must be True or False, not {value!r}")
    return value


def choice(name: str, value: Any, choices: Collection[str], *, where: str | None = None) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise _fail(where, f"{name} must be {' or '.join(repr(c) for c in choices)}, not {value!r}")
    return value
