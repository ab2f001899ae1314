"""Replay and purge from the page: a confirmation form, then a checked POST.

``GET /act/replay?id=…&id=…`` shows what would be done and a form signed for exactly that
action on those ids; ``POST /act/replay`` checks the form's signature, the token typed in it and
the request's ``Origin``, then calls ``dr.replay`` (or ``dr.purge``), the same functions as
``dramatiq-reliable dead replay``. A refused request gets 403 and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .. import dead as dead_api
from . import control_actions
from .app import Site
from .security import ACTIONS

logger = logging.getLogger(__name__)

#: Ids one form may carry.
MAX_IDS = 1_000
#: Longest id accepted (characters).
MAX_ID = 200
#: Largest form body read (bytes).
MAX_BODY = 256 * 1024
#: Seconds a request with a wrong token waits before its 403 (slows one client's guessing;
#: :class:`~.security.Lockout` bounds parallel guessing).
WRONG_TOKEN_DELAY = 1.0


def _check_ids(ids: list[str]) -> str | None:
    if not ids:
        return "no ids were given"
    if len(ids) > MAX_IDS:
        return f"at most {MAX_IDS} at once"
    if any(not i or len(i) > MAX_ID for i in ids):
        return "an id is empty or too long"
    return None


def confirm(site: Site, request: Request) -> Response:
    """The confirmation form for an action on the ids of the query (``?id=…&id=…``)."""
    action = request.path_params["action"]
    if action not in ACTIONS:
        return site.error(request, 404, "Not found", f"There is no action {action!r}.")
    if not site.guard.enabled:
        logger.warning("refused the %s form to %s: actions are off", action, who(request))
        return site.error(request, 403, "Actions are off", "This page was started read-only (see docs/web.md).")
    ids = list(dict.fromkeys(request.query_params.getlist("id")))
    problem = _check_ids(ids)
    if problem:
        return site.error(request, 400, "Nothing to do", problem)
    if action in control_actions.CONTROLS:
        return control_actions.confirm(site, request, action, ids, site.guard.sign(action, ids))
    letters = site.store.get_dead_letters(ids)
    rows = list(zip(ids, letters, strict=True))
    form_signature = site.guard.sign(action, ids)
    return site.page(request, "confirm.html", action=action, rows=rows, ids=ids, form_signature=form_signature)


def _origin_mismatch(request: Request) -> bool:
    """A browser's POST from another site (its ``Origin`` names another host than ours)."""
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != request.headers.get("host", "")


def who(request: Request) -> str:
    """The client as the log and the job's history name it: ``ann from 10.0.0.7``, or the address."""
    client = request.client.host if request.client else "?"
    user = request.scope.get("dr_user")
    return f"{user} from {client}" if user else client


def bind_post(site: Site) -> Callable[[Request], Awaitable[Response]]:
    """The ``POST /act/{action}`` endpoint."""

    async def act(request: Request) -> Response:
        action = request.path_params["action"]
        client = who(request)

        def refuse(status_code: int, reason: str, ids: list[str] | None = None) -> Response:
            count = f"{len(ids)} {_noun(action)}" if ids is not None else _noun(action)
            logger.warning("refused %s of %s from %s: %s", action, count, client, reason)
            return site.error(request, status_code, "Refused", f"{reason}. Nothing was changed.")

        if action not in ACTIONS:
            logger.warning("refused an unknown action %r from %s", action, client)
            return site.error(request, 404, "Not found", f"There is no action {action!r}.")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return refuse(415, "the form must be posted as application/x-www-form-urlencoded")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return refuse(413, "the form is too large")
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        ids = form.get("id", [])
        if _origin_mismatch(request):
            return refuse(403, "the form was posted from another site", ids)
        # Checked and counted with no await in between: parallel guesses cannot slip past the count.
        key = str(request.scope.get("dr_user") or client)
        blocked = site.lockout.refuse(key) if site.guard.enabled else None
        if blocked is not None:
            return refuse(429, blocked, ids)
        reason = site.guard.refuse(
            action, ids, (form.get("csrf") or [""])[0], (form.get("token") or [""])[0]
        ) or _check_ids(ids)
        if reason is not None:
            if reason == "wrong token":
                site.lockout.failed(key)
                await anyio.sleep(WRONG_TOKEN_DELAY)
            return refuse(403, reason, ids)
        logger.info("%s of %d %s asked by %s: %s", action, len(ids), _noun(action), client, " ".join(ids[:20]))
        results = await run_in_threadpool(_run, site, action, ids, f"the support page ({client})")
        done = sum(1 for r in results if r.ok)
        logger.info("%s of %d %s by %s: %d done", action, len(ids), _noun(action), client, done)
        back = ("/dead", "dead letters") if action in ("replay", "purge") else ("/workers", "workers")
        return site.page(request, "results.html", action=action, results=results, done=done, back=back)

    return act


def _noun(action: str) -> str:
    if action in ("replay", "purge"):
        return "dead letters"
    return "jobs" if action in ("cancel", "retry-now") else "actors or queues"


def _run(site: Site, action: str, ids: list[str], by: str) -> list[Any]:
    if action in control_actions.CONTROLS:
        return control_actions.run(site, action, ids, by)
    assert site.broker is not None  # create_app refuses a token without a broker
    fn = dead_api.replay if action == "replay" else dead_api.purge
    with site.broker_lock:
        return fn(site.store, site.broker, ids, by=by)
