"""Argument snapshots and business keys: what JobState records about a job's arguments.

Arguments are bound to the actor's parameter names (extra positionals under ``*args``),
secrets are redacted by name at any depth (see :mod:`._secrets` for the matching rule), URL
credentials inside strings are masked, values nested deeper than ``MAX_DEPTH`` levels become a
placeholder, and the JSON is capped at ``max_args_bytes``. The parameter names of each actor
are computed once.
"""

from __future__ import annotations

import inspect
import json
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import _validate
from ._secrets import DEFAULT_REDACT, MAX_DEPTH, REDACTED, TextMask, is_secret, mask_urls, normalize, secret_values
from .errors import ArgumentsError, ConfigurationError

__all__ = ["DEFAULT_REDACT", "REDACTED", "Snapshotter", "check_track", "signature"]

#: What a value nested deeper than ``MAX_DEPTH`` levels is replaced with in a snapshot.
TOO_DEEP = f"[nested deeper than {MAX_DEPTH} levels]"

_SCALARS = (str, int, float, bool, type(None))
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def key_text(value: Any) -> str:
    """A business key's value as it is recorded and searched: a string as is, anything else as
    compact JSON (``7`` → ``"7"``, ``True`` → ``"true"``, ``None`` → ``"null"``).

    Raises:
      TypeError, ValueError: the value is not JSON.
    """
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Signature:
    __slots__ = ("names", "positional", "varargs", "varkw")

    def __init__(self, fn: Any) -> None:
        #: Every named parameter; the first ``positional`` of them take positional arguments.
        self.names: list[str] = []
        self.positional = 0
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
                self.positional += 1
            elif p.kind is p.VAR_POSITIONAL:
                self.varargs = p.name
            elif p.kind is p.VAR_KEYWORD:
                self.varkw = True
            else:
                self.names.append(p.name)

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        n = self.positional
        bound = dict(zip(self.names[:n], args, strict=False))
        if len(args) > n:  # the tail: redacted by the same rules, under the var-positional's name
            bound["*" + (self.varargs or "args")] = list(args[n:])
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


class Snapshotter:
    """Turns a message's arguments into a redacted, capped JSON snapshot and business keys.

    Parameters:
      redact(Iterable[str]): secret names (whole words of an argument's name, any case; see
        :mod:`dramatiq_reliable._secrets`) whose values are hidden.
      max_args_bytes(int): the largest snapshot kept whole; larger ones keep a preview.
    """

    def __init__(self, redact: Iterable[str] = DEFAULT_REDACT, max_args_bytes: int = 4096) -> None:
        redact = _validate.names("redact", redact)
        max_args_bytes = _validate.count("max_args_bytes", max_args_bytes, least=64)
        self.redact = normalize(redact)
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
            text = _encode(self._redact(bound, 0) if self._needs_redaction(bound) else bound)
        except (TypeError, ValueError):
            raise self._not_json(actor_name, bound) from None
        size = len(text.encode("utf-8"))
        if size > self.max_args_bytes:
            preview = text.encode("utf-8")[: self.max_args_bytes // 2].decode("utf-8", "ignore")
            return json.dumps({"_truncated": True, "_bytes": size, "_preview": preview}, ensure_ascii=False)
        return text

    def secret(self, name: str) -> bool:
        """Whether values of an argument called ``name`` are redacted."""
        return is_secret(name, self.redact)

    def redacted(self, value: Any) -> Any:
        """One argument's value as a snapshot shows it (secret keys hidden, URL credentials masked)."""
        return self._redact(value, 1)

    def positional_names(self, fn: Any) -> list[str]:
        """The names of ``fn``'s parameters that take positional arguments, in order."""
        sig = signature(fn)
        return sig.names[: sig.positional]

    def mask(self, bound: dict[str, Any]) -> TextMask:
        """What masks the secret values of ``bound`` (and any URL credentials) in text."""
        return TextMask(secret_values(bound, self.redact), self.redact)

    def keys(self, track: tuple[str, ...], bound: dict[str, Any]) -> dict[str, str]:
        """The business keys named by ``track``, as strings (see :func:`key_text`), URL credentials masked."""
        out = {}
        for name in track:
            if name in bound:
                value = bound[name]
                if not isinstance(value, _SCALARS):
                    value = self._redact(value, 1)
                out[name] = mask_urls(key_text(value), self.redact)
        return out

    def _needs_redaction(self, bound: dict[str, Any]) -> bool:
        """False when no name is secret and every value is a plain scalar (the common case, made cheap)."""
        redact = self.redact
        for name, value in bound.items():
            if not isinstance(value, _SCALARS) or is_secret(name, redact):
                return True
            if isinstance(value, str) and ("@" in value or "=" in value):  # maybe a URL with credentials
                return True
        return False

    def _redact(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return mask_urls(value, self.redact) if "@" in value or "=" in value else value
        if isinstance(value, (dict, list, tuple)) and depth >= MAX_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            return {
                k: REDACTED if isinstance(k, str) and is_secret(k, self.redact) else self._redact(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self._redact(v, depth + 1) for v in value]
        return value

    def _not_json(self, actor_name: str, bound: dict[str, Any]) -> ArgumentsError:
        for name, value in bound.items():
            try:
                _encode(self._redact(value, 1))
            except (TypeError, ValueError):
                return ArgumentsError(
                    f"{actor_name}: argument {name!r} is a {type(value).__name__}, which is not "
                    "JSON-serializable; send ids and plain values"
                )
        return ArgumentsError(f"{actor_name}: the arguments are not JSON-serializable")
