"""Who may read the page: HTTP basic auth, or a user name set by a trusted reverse proxy.

Without either, whoever reaches the port reads the page (keep it on loopback). With
:class:`Auth`, every request is checked before any page is rendered:

* **basic**: ``Authorization: Basic …`` must carry one of the configured user names and
  passwords (compared in constant time); otherwise 401 with a ``WWW-Authenticate`` challenge.
  Wrong passwords count towards the page's :class:`~.security.Lockout`.
* **header**: the request must come from a trusted proxy address (``trusted``, networks) and
  carry the header (e.g. ``X-Forwarded-User``, which the proxy sets after its own login);
  a request from another address, or without the header, gets 403. The header is never
  believed from anyone else, so reaching the port directly does not let anyone name
  themselves.

The user name is kept in the request's scope (``scope["dr_user"]``), shown in the page's
header, logged with every action and written into a job's history by replay and purge.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .security import Lockout

logger = logging.getLogger("dramatiq_reliable.web")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> list[Network]:
    """``["10.0.0.0/8", "127.0.0.1"]`` → networks.

    Raises:
      ValueError: a value that is no address or network.
    """
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network (e.g. 10.0.0.0/8, 127.0.0.1)") from None
    return networks


def parse_users(values: Sequence[str]) -> dict[str, str]:
    """``["ann:s3cret"]`` → ``{"ann": "s3cret"}``.

    Raises:
      ValueError: a value without ``:``, or with an empty name or password.
    """
    users = {}
    for value in values:
        name, sep, password = value.partition(":")
        if not sep or not name or not password:
            raise ValueError("basic auth is given as USER:PASSWORD, both non-empty")
        users[name] = password
    return users


@dataclass
class Auth:
    """How readers are recognized. Give ``users`` (basic auth) or ``header`` (with ``trusted``).

    Parameters:
      users(dict[str, str]): user name -> password, for HTTP basic auth.
      header(str | None): the request header a trusted proxy puts the user name in.
      trusted(list): the proxies' addresses (``ipaddress`` networks); needed with ``header``.

    Raises:
      ValueError: both or neither of ``users`` and ``header``; ``header`` without ``trusted``.
    """

    users: Mapping[str, str] = field(default_factory=dict)
    header: str | None = None
    trusted: Sequence[Network] = ()

    def __post_init__(self) -> None:
        if bool(self.users) == bool(self.header):
            raise ValueError("give either basic auth users or a trusted proxy's header, not both")
        if self.header and not self.trusted:
            raise ValueError("a user header is only believed from trusted proxies: give their addresses")

    @property
    def kind(self) -> str:
        return "basic auth" if self.users else f"the {self.header} header from trusted proxies"

    def trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def basic_user(self, authorization: str) -> str | None:
        """The user a ``Basic`` authorization names, if its password is right."""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        ok = False
        for user, expected in self.users.items():  # every entry compared: no timing per user
            ok |= hmac.compare_digest(user.encode(), name.encode()) & hmac.compare_digest(
                expected.encode(), password.encode()
            )
        return name if ok else None


class Authenticate:
    """ASGI middleware: refuse HTTP requests :class:`Auth` does not recognize; name the others."""

    def __init__(self, app: ASGIApp, auth: Auth, lockout: Lockout) -> None:
        self.app, self.auth, self.lockout = app, auth, lockout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "?"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = self.auth
        if auth.header:
            user = headers.get(auth.header.lower(), "").strip()
            if not auth.trusts(client):
                return await self._refuse(scope, receive, send, 403, client, "not a trusted proxy")
            if not user:
                return await self._refuse(scope, receive, send, 403, client, f"no {auth.header} header")
        else:
            blocked = self.lockout.refuse(client)
            if blocked:
                return await self._refuse(scope, receive, send, 429, client, blocked)
            found = auth.basic_user(headers.get("authorization", ""))
            if found is None:
                if "authorization" not in headers:  # a browser's first request: it asks the reader
                    return await self._refuse(scope, receive, send, 401, client, "no user and password", logging.INFO)
                self.lockout.failed(client)
                return await self._refuse(scope, receive, send, 401, client, "wrong user or password")
            user = found
        scope["dr_user"] = user
        await self.app(scope, receive, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, code: int, client: str, why: str, level: int = logging.WARNING
    ) -> None:
        logger.log(level, "refused %s %s from %s: %s", scope.get("method"), scope.get("path"), client, why)
        headers = {"www-authenticate": 'Basic realm="dramatiq-reliable", charset="UTF-8"'} if code == 401 else {}
        text = f"Refused: {why}. This page needs {self.auth.kind}.\n"
        await PlainTextResponse(text, code, headers=headers)(scope, receive, send)
