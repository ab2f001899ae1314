"""Argument snapshots and business keys: what JobState records about a job's arguments.

Arguments are bound to the actor's parameter names, secrets are redacted by name (at any
depth), and the JSON is capped at ``max_args_bytes``. The parameter names of each actor are
computed once.
"""

from __future__ import annotations

import inspect
import json
import weakref
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from . import _validate
from .errors import ArgumentsError, ConfigurationError

#: Argument names redacted by default: a name containing one of these (case-insensitive).
DEFAULT_REDACT = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "card",
    "cvv",
    "private_key",
    "credentials",
)
#: What a redacted value is replaced with.
REDACTED = "[redacted]"

_SCALARS = (str, int, float, bool, type(None))
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Signature:
    __slots__ = ("names", "varargs", "varkw")

    def __init__(self, fn: Any) -> None:
        self.names: list[str] = []
        self.varargs: str | None = None
        self.varkw = False
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            self.varargs, self.varkw = "args", True
            return
        for p in params:
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                self.names.append(p.name)
            elif p.kind is p.VAR_POSITIONAL:
                self.varargs = p.name
            elif p.kind is p.VAR_KEYWORD:
                self.varkw = True
            else:
                self.names.append(p.name)

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        bound = dict(zip(self.names, args, strict=False))
        if len(args) > len(self.names):
            bound["*" + (self.varargs or "args")] = list(args[len(self.names) :])
        bound.update(kwargs)
        return bound


_signatures: weakref.WeakKeyDictionary[Any, _Signature] = weakref.WeakKeyDictionary()


def signature(fn: Any) -> _Signature:
    """The parameter names of ``fn``, computed once per function."""
    try:
        sig = _signatures.get(fn)
        if sig is None:
            sig = _signatures[fn] = _Signature(fn)
    except TypeError:  # not weak-referenceable
        return _Signature(fn)
    return sig


def check_track(actor_name: str, fn: Any, track: Any) -> tuple[str, ...]:
    """Validate an actor's ``track`` option; return it as a tuple.

    Raises:
      ConfigurationError: ``track`` is not a tuple of argument names of ``fn``.
    """
    names = _validate.names("track", track, where=f"actor {actor_name!r}", example=repr(track), of="argument names")
    sig = signature(fn)
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigurationError(f"actor {actor_name!r}: track names must be argument names, not {name!r}")
        if name not in sig.names and not sig.varkw:
            raise ConfigurationError(
                f"actor {actor_name!r}: track names {name!r}, which is not one of its arguments "
                f"({', '.join(sig.names) or 'none'})"
            )
    return names


@lru_cache(maxsize=4096)
def _secret(name: str, redact: tuple[str, ...]) -> bool:
    folded = name.lower().replace("-", "_")
    return any(word in folded for word in redact)


class Snapshotter:
    """Turns a message's arguments into a redacted, capped JSON snapshot and business keys.

    Parameters:
      redact(Iterable[str]): names (substrings, case-insensitive) whose values are hidden.
      max_args_bytes(int): the largest snapshot kept whole; larger ones keep a preview.
    """

    def __init__(self, redact: Iterable[str] = DEFAULT_REDACT, max_args_bytes: int = 4096) -> None:
        redact = _validate.names("redact", redact)
        max_args_bytes = _validate.count("max_args_bytes", max_args_bytes, least=64)
        self.redact = tuple(str(r).lower().replace("-", "_") for r in redact)
        self.max_args_bytes = max_args_bytes

    def bind(self, fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments by parameter name (extra positionals under ``"*<varargs name>"``)."""
        if not args and not kwargs:
            return {}
        return signature(fn).bind(args, kwargs)

    def snapshot(self, actor_name: str, bound: dict[str, Any]) -> str:
        """The redacted JSON of ``bound``, capped at ``max_args_bytes``.

        Raises:
          ArgumentsError: an argument is not JSON-serializable.
        """
        if not bound:
            return "{}"
        try:
            text = _encode(self._redact(bound) if self._needs_redaction(bound) else bound)
        except (TypeError, ValueError):
            raise self._not_json(actor_name, bound) from None
        size = len(text.encode("utf-8"))
        if size > self.max_args_bytes:
            preview = text.encode("utf-8")[: self.max_args_bytes // 2].decode("utf-8", "ignore")
            return json.dumps({"_truncated": True, "_bytes": size, "_preview": preview}, ensure_ascii=False)
        return text

    def secret(self, name: str) -> bool:
        """Whether values of an argument called ``name`` are redacted."""
        return _secret(name, self.redact)

    def keys(self, track: tuple[str, ...], bound: dict[str, Any]) -> dict[str, str]:
        """The business keys named by ``track``, as strings (``7`` → ``"7"``)."""
        out = {}
        for name in track:
            if name in bound:
                value = bound[name]
                out[name] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return out

    def _needs_redaction(self, bound: dict[str, Any]) -> bool:
        """False when no name is secret and every value is a scalar (the common case, made cheap)."""
        redact = self.redact
        return any(not isinstance(value, _SCALARS) or _secret(name, redact) for name, value in bound.items())

    def _redact(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: REDACTED if isinstance(k, str) and _secret(k, self.redact) else self._redact(v)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self._redact(v) for v in value]
        return value

    def _not_json(self, actor_name: str, bound: dict[str, Any]) -> ArgumentsError:
        for name, value in bound.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                return ArgumentsError(
                    f"{actor_name}: argument {name!r} is a {type(value).__name__}, which is not "
                    "JSON-serializable; send ids and plain values"
                )
        return ArgumentsError(f"{actor_name}: the arguments are not JSON-serializable")
