"""Cancel, retry now, pause and resume from the page, behind the same form, token and checks as replay.

``GET /act/cancel?id=JOB`` (or ``retry-now``) and ``GET /act/pause?id=actor:NAME`` (or
``queue:NAME``, ``resume``) show what would be done; the ``POST`` that follows is checked by
:func:`.actions.bind_post` and calls the library's :mod:`dramatiq_reliable.control`, as the CLI does.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from .. import control
from ..records import JobRecord
from .app import Site

#: The control actions and what they say on the confirmation form.
CONTROLS = {
    "cancel": "Each job is cancelled: if it waits it never runs; if it runs, its worker is asked to stop it.",
    "retry-now": "Each job waiting for its next retry runs now, once.",
    "pause": "Workers hold its messages (put back with a delay, attempts not spent) until it is resumed.",
    "resume": "Its held messages run again as their hold ends (within 30 seconds).",
}


@dataclass(frozen=True)
class Outcome:
    """A row of the results page."""

    id: str
    ok: bool
    outcome: str
    detail: str


def confirm(site: Site, request: Request, action: str, ids: list[str], form_signature: str) -> Response:
    if action in ("pause", "resume"):
        bad = [i for i in ids if i.partition(":")[0] not in ("actor", "queue") or not i.partition(":")[2]]
        if bad:
            return site.error(request, 400, "Nothing to do", f"not actor:NAME or queue:NAME: {bad[0]!r}")
        rows: list[tuple[str, JobRecord | None]] = [(i, None) for i in ids]
    else:
        rows = list(zip(ids, [site.store.get_job(i) for i in ids], strict=True))
    return site.page(
        request,
        "confirm_control.html",
        action=action,
        explain=CONTROLS[action],
        rows=rows,
        ids=ids,
        form_signature=form_signature,
    )


def run(site: Site, action: str, ids: list[str], by: str) -> list[Outcome]:
    store = site.store
    if action == "cancel":
        return [_job(r, "cancelled") for r in control.cancel(store, ids, by=by)]
    if action == "retry-now":
        return [_job(control.retry_now(store, i, by=by), "runs now") for i in ids]
    out = []
    for target in ids:
        kind, _, name = target.partition(":")
        switch = control.pause if action == "pause" else control.resume
        result = switch(store, **{kind: name}, by=by)
        state = "paused" if action == "pause" else "resumed"
        out.append(
            Outcome(target, True, state if result.changed else "unchanged", "" if result.changed else "nothing changed")
        )
    return out


def _job(result: control.ControlResult, done: str) -> Outcome:
    if result.changed:
        return Outcome(result.id, True, done, f"was {result.was}")
    if result.state == "unknown":
        return Outcome(result.id, False, "not found", "no such job; nothing changed")
    return Outcome(result.id, False, result.state, "nothing changed")
