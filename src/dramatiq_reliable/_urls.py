"""Server URLs as people see them: the password hidden, even in a URL that does not parse.

Every store or broker URL that reaches a message, a log line or a page goes through
:func:`hide_password`. The query options of Redis URLs are checked here too, so a typo is one
clear error when the URL is read, not a ``TypeError`` from the Redis client at the first call.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from .errors import ConfigurationError

#: Query parameters whose value is a secret (``redis://host/0?password=…``).
_SECRET_QUERY = re.compile(r"([?&;][^=&;#]*(?:pass|pwd|secret|token)[^=&;#]*=)[^&;#]*", re.IGNORECASE)
#: Where a second URL starts in a list of them (``amqp://a/;amqp://b/``).
_NEXT_URL = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")

#: Query options of a Redis URL that the Redis client takes as text (the others are in
#: ``redis.connection.URL_QUERY_ARGUMENT_PARSERS``).
_REDIS_TEXT_OPTIONS = frozenset(
    {
        "username",
        "password",
        "client_name",
        "lib_name",
        "lib_version",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_ciphers",
    }
)


def hide_password(url: object) -> str:
    """``url`` with its password replaced by ``***``: ``redis://:secret@host/1`` → ``redis://:***@host/1``.

    Works on any text: a URL that does not parse (a port that is no number, a password with an
    unencoded ``/`` or ``@``), a ``?password=`` query, a list of URLs separated by ``;``.
    Over-masking is preferred to showing a secret.
    """
    text = url if isinstance(url, str) else repr(url)
    text = _SECRET_QUERY.sub(r"\1***", text)
    return ";".join(_hide_userinfo(part) for part in _NEXT_URL.split(text))


def _hide_userinfo(text: str) -> str:
    span = _password_span(text)
    return text if span is None else f"{text[: span[0]]}***{text[span[1] :]}"


def _password_span(text: str) -> tuple[int, int] | None:
    """Where the password of one URL is (``user:<password>@host``), or None without one."""
    marker = text.find("://")
    start = marker + 3 if marker >= 0 else text.find(":") + 1
    rest = text[start:]
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    netloc_end = min(ends) if ends else len(rest)
    at = rest.rfind("@", 0, netloc_end)
    if at < 0:
        # A password holding an unencoded '/', '?' or '#': the first '@' after a ':'.
        first = rest.find("@")
        at = first if first >= 0 and ":" in rest[:first] else -1
    colon = rest.find(":", 0, at) if at >= 0 else -1
    if colon < 0:
        return None  # no password (a user name alone is no secret)
    return start + colon + 1, start + at


def safe_reason(exc: BaseException, url: object) -> str:
    """The first line of ``exc``'s message, without any piece of ``url``'s secrets.

    URL parsers quote what they could not read (``Port could not be cast to integer value as
    'secret'`` when a password holds an unencoded ``/``): such pieces are masked too.
    """
    lines = str(exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    text = url if isinstance(url, str) else repr(url)
    secrets = [m.group(0).split("=", 1)[1] for m in _SECRET_QUERY.finditer(text)]
    for part in _NEXT_URL.split(text):
        span = _password_span(part)
        if span is not None:
            secrets.append(part[span[0] : span[1]])
    for quoted in set(re.findall(r"'([^']*)'", reason)):
        if quoted and any(quoted in secret for secret in secrets):
            reason = reason.replace(f"'{quoted}'", "'***'")
    for secret in secrets:
        if secret:
            reason = reason.replace(secret, "***")
    return reason


def check_redis_query(options: Collection[str], own: Collection[str], url: str, what: str) -> None:
    """Refuse a Redis URL's query option that neither the Redis client nor we (``own``) know.

    Raises:
      ConfigurationError: naming the option and the URL (password hidden).
    """
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    known = {*URL_QUERY_ARGUMENT_PARSERS, *_REDIS_TEXT_OPTIONS, *own}
    for name in options:
        if name not in known:
            raise ConfigurationError(
                f"unknown option {name!r} in {what} URL {hide_password(url)!r} (known: {', '.join(sorted(known))})"
            )
