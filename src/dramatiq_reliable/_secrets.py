"""Secrets: which names are secret, and masking of secret values and URL credentials in text.

Names. An argument (or dict key, or URL query parameter) is secret when one of the ``redact``
entries appears in its name as whole words. Names are split into words at ``_``, ``-``, ``.``,
spaces, digits and camelCase humps (``userPIN2`` → ``user pin 2``); an entry matches a run of
consecutive words, compared without separators and case, and the run's last word may add an
``s`` (``token`` matches ``auth_token``, ``tokens`` and ``csrfToken``; ``api_key`` matches
``apiKey``, ``x-api-key`` and ``apikey``). So ``pin`` hides ``pin`` and ``user_pin`` but not
``shipping_address`` or ``spinner``, and ``auth`` hides ``auth_header`` but not ``author``.

Text. Error messages, tracebacks and log lines are masked with the values the job's redacted
arguments held (:class:`TextMask`): every occurrence of such a value is replaced with
``[redacted]``. Values shorter than :data:`MIN_MASKED_LENGTH` characters are left in text (the
arguments snapshot still hides them): replacing every ``"1"`` or ``"ab"`` in a traceback would
garble it and hide nothing an observer could not guess. URL credentials are masked wherever
they appear: ``scheme://user:pass@host`` becomes ``scheme://user:***@host``, and a secret query
parameter (``?password=…``, ``&token=…``) keeps its name and loses its value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

#: Names redacted by default (whole words of an argument's name, see the module's docstring).
DEFAULT_REDACT = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "auth",
    "authorization",
    "api_key",
    "access_key",
    "private_key",
    "credential",
    "cookie",
    "session",
    "card",
    "cvv",
    "pin",
    "dsn",
)
#: What a redacted value is replaced with (in snapshots and in text).
REDACTED = "[redacted]"
#: What the password of a URL is replaced with.
URL_MASK = "***"
#: Values shorter than this (characters) are not masked in text: they would garble it.
MIN_MASKED_LENGTH = 4
#: Nesting levels looked into for secret values (deeper ones are not recorded anyway).
MAX_DEPTH = 64

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|[^\W\d_A-Za-z]+")
#: ``scheme://user:password@`` (the user may be empty: ``redis://:password@host``).
_URL_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*:)(?P<pw>[^\s@/'\"]+)(?=@)")
#: ``?name=value`` / ``&name=value`` / ``;name=value`` of a URL's query.
_QUERY = re.compile(r"(?P<head>[?&;](?P<name>[A-Za-z0-9_.\-]+)=)(?P<value>[^&#\s'\"]*)")


def words(name: str) -> tuple[str, ...]:
    """The lower-case words of a name: ``"userPIN_code2"`` → ``("user", "pin", "code", "2")``."""
    return tuple(w.lower() for w in _WORD.findall(name))


def normalize(redact: Iterable[str]) -> tuple[str, ...]:
    """Redact entries as matched: their words joined (``"API-Key"`` → ``"apikey"``)."""
    return tuple(dict.fromkeys(j for j in ("".join(words(str(r))) for r in redact) if j))


DEFAULT_NORMALIZED = normalize(DEFAULT_REDACT)


@lru_cache(maxsize=8192)
def is_secret(name: str, redact: tuple[str, ...] = DEFAULT_NORMALIZED) -> bool:
    """Whether ``name`` holds a secret under ``redact`` (entries from :func:`normalize`)."""
    parts = words(name)
    for entry in redact:
        for i in range(len(parts)):
            run = ""
            for part in parts[i:]:
                run += part
                if run == entry or run == entry + "s":
                    return True
                if len(run) > len(entry):
                    break
    return False


def mask_urls(text: str, redact: tuple[str, ...] = DEFAULT_NORMALIZED) -> str:
    """``text`` with URL passwords and secret query parameter values masked."""
    if "@" in text and "://" in text:
        text = _URL_USERINFO.sub(lambda m: m["head"] + URL_MASK, text)
    if "=" in text:
        text = _QUERY.sub(lambda m: m["head"] + URL_MASK if m["value"] and is_secret(m["name"], redact) else m[0], text)
    return text


def url_secrets(text: str, redact: tuple[str, ...] = DEFAULT_NORMALIZED) -> list[str]:
    """The passwords and secret query values inside the URLs of ``text``."""
    found = []
    if "@" in text and "://" in text:
        found += [m["pw"] for m in _URL_USERINFO.finditer(text)]
    if "=" in text:
        found += [m["value"] for m in _QUERY.finditer(text) if m["value"] and is_secret(m["name"], redact)]
    return found


def secret_values(bound: dict[str, Any], redact: tuple[str, ...] = DEFAULT_NORMALIZED) -> list[str]:
    """The values of ``bound`` that are secret, as text: under secret names, or URL credentials.

    Scalars under a secret name count whole (numbers as their decimal text); strings anywhere
    count for the credentials of their URLs. Nothing deeper than :data:`MAX_DEPTH` is visited.
    """
    found: list[str] = []
    stack: list[tuple[Any, bool, int]] = [(v, is_secret(k, redact), 1) for k, v in bound.items()]
    while stack:
        value, secret, depth = stack.pop()
        if isinstance(value, str):
            if secret:
                found.append(value)
            else:
                found += url_secrets(value, redact)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if secret:
                found.append(repr(value))
        elif depth < MAX_DEPTH and isinstance(value, dict):
            stack += [(v, secret or (isinstance(k, str) and is_secret(k, redact)), depth + 1) for k, v in value.items()]
        elif depth < MAX_DEPTH and isinstance(value, (list, tuple)):
            stack += [(v, secret, depth + 1) for v in value]
    return found


class TextMask:
    """Masks a job's secret values, and any URL credentials, in text.

    Parameters:
      values(Iterable[str]): the secret values (those shorter than :data:`MIN_MASKED_LENGTH`
        are ignored). Their ``repr`` and JSON spellings are masked too, as tracebacks and log
        lines quote them.
      redact(tuple[str]): normalized names, for URL query parameters.
    """

    __slots__ = ("_pattern", "redact")

    def __init__(self, values: Iterable[str] = (), redact: tuple[str, ...] = DEFAULT_NORMALIZED) -> None:
        self.redact = redact
        spellings: set[str] = set()
        for value in values:
            if len(value) < MIN_MASKED_LENGTH:
                continue
            spellings.add(value)
            spellings.add(repr(value)[1:-1])
            spellings.add(_json_inner(value))
        spellings = {s for s in spellings if len(s) >= MIN_MASKED_LENGTH}
        ordered = sorted(spellings, key=len, reverse=True)  # the longest first: no partial leftovers
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return mask_urls(text, self.redact)

    def error(self, err: dict[str, str]) -> dict[str, str]:
        """An error's ``{type, message, traceback}`` with its message and traceback masked."""
        return {k: self(v) if k != "type" and isinstance(v, str) else v for k, v in err.items()}


def _json_inner(value: str) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)[1:-1]


def redact_message(
    message: dict[str, Any], snapshot: Any, redact: tuple[str, ...] = DEFAULT_NORMALIZED
) -> tuple[dict[str, Any], TextMask]:
    """A stored Dramatiq message as it may be shown, and what masks its secrets in other text.

    The message keeps its arguments whole (a replay needs them); the copy returned hides those
    the job's recorded ``snapshot`` shows as ``[redacted]`` (matched by position and name, at
    any depth), those under a secret name, and URL credentials; its options (a retry's
    ``traceback`` among them) are masked with the values hidden.
    """
    found: list[str] = []
    shown: dict[str, Any] = dict(message)
    recorded = snapshot if isinstance(snapshot, dict) and not snapshot.get("_truncated") else {}
    names = list(recorded)
    args = list(message.get("args") or ())
    out_args: list[Any] = []
    i = 0
    while i < len(args) and i < len(names) and not names[i].startswith("*"):
        out_args.append(_hide(args[i], recorded[names[i]], is_secret(names[i], redact), redact, found, 1))
        i += 1
    tail_name = names[i] if i < len(names) and names[i].startswith("*") else None
    tail = recorded.get(tail_name) if tail_name else None
    hidden_tail = tail_name is not None and is_secret(tail_name, redact)
    out_args += [
        _hide(v, tail[j] if isinstance(tail, list) and j < len(tail) else tail, hidden_tail, redact, found, 1)
        for j, v in enumerate(args[i:])
    ]
    shown["args"] = out_args
    kwargs = message.get("kwargs") or {}
    shown["kwargs"] = {
        k: _hide(v, recorded.get(k), isinstance(k, str) and is_secret(k, redact), redact, found, 1)
        for k, v in kwargs.items()
    }
    mask = TextMask(found, redact)
    if isinstance(message.get("options"), dict):
        shown["options"] = _mask_strings(message["options"], mask, 1)
    return shown, mask


def _hide(value: Any, recorded: Any, secret: bool, redact: tuple[str, ...], found: list[str], depth: int) -> Any:
    if secret or (recorded == REDACTED and value != REDACTED):
        found += secret_values({"v": value}, ("v",))
        return REDACTED
    if isinstance(value, str):
        found += url_secrets(value, redact)
        return mask_urls(value, redact)
    if depth >= MAX_DEPTH:
        return value if not isinstance(value, (dict, list)) else REDACTED
    if isinstance(value, dict):
        inner = recorded if isinstance(recorded, dict) else {}
        return {
            k: _hide(v, inner.get(k), isinstance(k, str) and is_secret(k, redact), redact, found, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        items = recorded if isinstance(recorded, list) and len(recorded) == len(value) else [None] * len(value)
        return [_hide(v, r, False, redact, found, depth + 1) for v, r in zip(value, items, strict=True)]
    return value


def _mask_strings(value: Any, mask: TextMask, depth: int) -> Any:
    if isinstance(value, str):
        return mask(value)
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {k: _mask_strings(v, mask, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_strings(v, mask, depth + 1) for v in value]
    return value
