"""Strict readers of what the stores keep: a value of the wrong shape is a corrupt record.

The stores write compact JSON (see ``store/redis.py``). Something else may have written the
key (a person with ``redis-cli``, another program, a disk fault): then the record is corrupt,
and readers say so in words (``Corrupt.reason``, ``BadField``) instead of raising whatever the
decoder happened to raise, so that a listing can skip it and ``jobs show`` can name it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._clock import from_ms


@dataclass(frozen=True)
class Corrupt:
    """A stored value that cannot be decoded, and why (``"not JSON"``, ``"nested too deep"``, …)."""

    reason: str


class BadField(ValueError):
    """A field of a stored record has a value of the wrong type or out of range (the message says which)."""


def shown(value: Any, width: int = 40) -> str:
    """``repr(value)``, capped to ``width`` characters (a corrupt value can be megabytes)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= width else text[: width - 3] + "..."


def decode_object(raw: bytes | str | None, *required: str) -> dict[str, Any] | Corrupt | None:
    """A stored JSON object holding every ``required`` field; ``None`` if missing, else ``Corrupt``."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        return Corrupt("not UTF-8 text")
    except RecursionError:
        return Corrupt("JSON nested too deep")
    except ValueError as exc:
        return Corrupt(f"not JSON ({str(exc).splitlines()[0][:80]})")
    if not isinstance(data, dict):
        return Corrupt(f"not a JSON object but {type(data).__name__}")
    for name in required:
        if name not in data:
            return Corrupt(f"no {name!r} field")
    return data


def whole(value: Any, label: str) -> int | None:
    """A whole number (``None`` stays ``None``). Raises BadField."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadField(f"{label} {shown(value)} is not a number")
    if not math.isfinite(value) or value != int(value) or abs(value) > 2**53:
        raise BadField(f"{label} {shown(value)} is not a whole number in range")
    return int(value)


def moment(value: Any, label: str) -> datetime | None:
    """A time in milliseconds since the epoch (``None`` stays ``None``). Raises BadField."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadField(f"{label} time {shown(value)} is not a number")
    try:
        return from_ms(value)
    except (OverflowError, ValueError, OSError):
        raise BadField(f"{label} time {shown(value)} is out of range") from None


def text(value: Any, label: str) -> str | None:
    """A string (``None`` stays ``None``). Raises BadField."""
    if value is None or isinstance(value, str):
        return value
    raise BadField(f"{label} {shown(value)} is not text")


_BEGUN = re.compile(r"^(?:redelivered: )?attempt \d+ on (.+)$")


def absolute(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A job record in its full form: the stored compact form (``e``) made whole.

    The store keeps ``start``, ``fin`` and the events' times (``e``) counted from ``enq`` (from 0
    when there is none), and leaves ``worker`` out when the latest start's event ("attempt N on
    <worker>") names it. A record with ``ev`` (the older form: times since the epoch) is
    returned as it is. Values of the wrong type are left for the decoder to name.
    """
    events = data.get("e")
    if "ev" in data or not isinstance(events, (list, dict)):
        return data
    enq = data.get("enq")
    base = enq if isinstance(enq, (int, float)) and not isinstance(enq, bool) else 0

    def shift(value: Any) -> Any:
        return value + base if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    ev = [[shift(e[0]), *e[1:]] if isinstance(e, list) and e else e for e in events] if isinstance(events, list) else []
    out = {k: v for k, v in data.items() if k != "e"}
    out["ev"] = ev
    for name in ("start", "fin"):
        if name in out:
            out[name] = shift(out[name])
    if out.get("worker") is None:
        for e in reversed(ev):
            if isinstance(e, list) and len(e) >= 3 and e[1] == "running" and isinstance(e[2], str):
                found = _BEGUN.match(e[2])
                if found:
                    if found.group(1) != "?":
                        out["worker"] = found.group(1)
                    break
    return out
