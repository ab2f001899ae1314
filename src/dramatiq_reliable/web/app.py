"""The ASGI app of the support page: routes, templates, security headers, error pages.

Built by :func:`create_app` over a store (and optionally a broker); served by
``dramatiq-reliable web``, or by any ASGI server::

    from dramatiq_reliable.web import create_app
    app = create_app(dr.RedisStore("redis://127.0.0.1:6379/1"), broker)   # uvicorn module:app
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import dramatiq
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._clock import ago, format_duration, iso
from ..actors.cron import Schedule
from ..errors import BrokerUnavailable, DramatiqReliableError, StoreUnavailable
from ..store.base import Store
from .auth import Auth, Authenticate
from .security import Guard, Lockout

#: Pages that refresh themselves (``static/live.js``) while open.
LIVE_PAGES = frozenset(
    {"search.html", "job.html", "dead.html", "dead_letter.html", "queues.html", "activity.html", "workers.html"}
)
#: Files under ``static/`` the page serves, with their media types.
STATIC = {"style.css": "text/css", "live.js": "text/javascript"}

#: Headers of every response: scripts and styles come from this page's own files only (no inline
#: script, no eval), nothing is framed.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; "
        b"form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


@dataclass
class Site:
    """What the pages read from and act on, shared by every request."""

    store: Store
    broker: dramatiq.Broker | None
    guard: Guard
    #: Cron schedules to show (from an app module), by name.
    schedules: list[Schedule] = field(default_factory=list)
    #: Queues the app declares (from an app module).
    declared_queues: list[str] = field(default_factory=list)
    #: Business keys a plain search text is also looked up as (e.g. ``order_id``).
    search_keys: list[str] = field(default_factory=list)
    #: Rows per listing page.
    page_size: int = 50
    #: Failed token checks, per client and in all (see :class:`Lockout`).
    lockout: Lockout = field(default_factory=Lockout)
    #: Seconds between a live page's refreshes; 0 turns the refresh off.
    refresh_s: int = 5
    #: Serializes every use of the broker: its clients are not shared across threads safely.
    broker_lock: threading.Lock = field(default_factory=threading.Lock)
    templates: Environment = field(init=False)

    def __post_init__(self) -> None:
        env = Environment(
            loader=PackageLoader("dramatiq_reliable.web", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(
            ago=_ago, iso=iso, path=_path, pretty=_pretty, first_line=_first_line, duration=format_duration
        )
        env.globals.update(query=_query)
        self.templates = env

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        """Render template ``name`` with the navigation's context."""
        context.update(
            request=request,
            actions=self.guard.enabled,
            has_broker=self.broker is not None,
            has_cron=bool(self.schedules),
            has_workers=True,
            user=request.scope.get("dr_user"),
            rendered_at=datetime.now(timezone.utc),
            live=self.refresh_s if name in LIVE_PAGES and status_code == 200 else 0,
        )
        return HTMLResponse(self.templates.get_template(name).render(context), status_code=status_code)

    def error(self, request: Request, status_code: int, title: str, detail: str) -> HTMLResponse:
        return self.page(request, "error.html", status_code, title=title, detail=detail)


def _ago(dt: datetime | None) -> str:
    return ago(dt.timestamp() * 1000) if dt is not None else "never"


def _path(value: str) -> str:
    """A value as one URL path segment."""
    return quote(str(value), safe="")


def _query(**params: Any) -> str:
    """``?a=1&b=2`` of the parameters that are set."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(kept) if kept else ""


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _first_line(value: Any, width: int = 200) -> str:
    lines = str(value).strip().splitlines()
    return lines[0][:width] if lines else ""


class SecurityHeaders:
    """ASGI middleware: add :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    store: Store,
    broker: dramatiq.Broker | None = None,
    *,
    token: str | None = None,
    schedules: Sequence[Schedule] = (),
    declared_queues: Sequence[str] = (),
    search_keys: Sequence[str] = (),
    allowed_hosts: Sequence[str] | None = None,
    secret: bytes | None = None,
    auth: Auth | None = None,
    refresh_s: int = 5,
    lockout: Lockout | None = None,
) -> Starlette:
    """The support page as an ASGI app.

    Parameters:
      store(Store): where the records and dead letters are read.
      broker(Broker | None): for dead letters not yet in the store, queue depths, replay and
        purge. Without one the page shows the store's copy only and cannot act.
      token(str | None): allows replay and purge to whoever types it into the confirmation
        form; ``None`` (the default) keeps the page read-only. Needs ``broker``.
      schedules(list[Schedule]): cron schedules to list (``registry_of(app_broker)``).
      declared_queues(list[str]): queues to show besides those the store and broker know.
      search_keys(list[str]): business key names a plain search text is also looked up as.
      allowed_hosts(list[str] | None): ``Host`` headers served (others get 400), against DNS
        rebinding; ``None`` serves any.
      secret(bytes | None): the key confirmation forms are signed with (default: random, so
        only this process accepts its forms; give the same secret to every replica).
      auth(Auth | None): who may read the page (basic auth or a trusted proxy's header);
        ``None``: whoever reaches it.
      refresh_s(int): seconds between the refreshes of a live page; 0: never.
      lockout(Lockout | None): limits on wrong tokens and passwords (default: :class:`Lockout`).

    Raises:
      ValueError: a token without a broker, or a token shorter than 12 characters.
    """
    from . import actions, views

    if token is not None and broker is None:
        raise ValueError("actions need a broker: replay and purge act on its dead-letter queues")
    site = Site(
        store=store,
        broker=broker,
        guard=Guard(token, secret=secret),
        schedules=list(schedules),
        declared_queues=list(declared_queues),
        search_keys=list(search_keys),
        lockout=lockout or Lockout(),
        refresh_s=refresh_s,
    )
    folder = resources.files("dramatiq_reliable.web").joinpath("static")
    files = {name: (folder.joinpath(name).read_bytes(), media) for name, media in STATIC.items()}

    async def static(request: Request) -> Response:
        found = files.get(request.path_params["name"])
        if found is None:
            return site.error(request, 404, "Not found", "There is no page at this address.")
        return Response(found[0], media_type=found[1])

    async def unavailable(request: Request, exc: Exception) -> Response:
        return site.error(request, 503, "A server cannot be reached", str(exc))

    async def failed(request: Request, exc: Exception) -> Response:
        return site.error(request, 500, "It did not work", str(exc))

    routes = [
        Route("/", views.bind(site, views.search), name="search"),
        Route("/jobs/{job_id:path}", views.bind(site, views.job), name="job"),
        Route("/dead", views.bind(site, views.dead_letters), name="dead"),
        Route("/dead/{job_id:path}", views.bind(site, views.dead_letter), name="dead_letter"),
        Route("/queues", views.bind(site, views.queues), name="queues"),
        Route("/cron", views.bind(site, views.cron), name="cron"),
        Route("/act/{action}", views.bind(site, actions.confirm), methods=["GET"], name="confirm"),
        Route("/act/{action}", actions.bind_post(site), methods=["POST"], name="act"),
        Route("/activity", views.bind(site, views.activity), name="activity"),
        Route("/workers", views.bind(site, views.workers), name="workers"),
        Route("/static/{name}", static, name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    if auth is not None:
        middleware.append(Middleware(Authenticate, auth=auth, lockout=site.lockout))

    async def not_found(request: Request, exc: Exception) -> Response:
        return site.error(request, 404, "Not found", "There is no page at this address.")

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            StoreUnavailable: unavailable,
            BrokerUnavailable: unavailable,
            DramatiqReliableError: failed,
            404: not_found,
        },
    )
    app.state.site = site
    return app
