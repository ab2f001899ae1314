"""The read-only pages: search, a job, dead letters, a dead letter, queues, cron schedules.

Each view is a plain function ``(site, request) -> Response`` calling the library's read API,
the same calls as the CLI's (``store.find_jobs``, ``dr.dead.find``, ``queue_stats``, …).
Starlette runs them in its thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import dead as dead_api
from .._clock import now_ms, time_ago
from ..backlog import discover_queues, queue_stats
from ..errors import ConfigurationError, CorruptRecord, NotFound
from ..records import JobRecord
from ..status import Status
from .app import Site

View = Callable[[Site, Request], Response]

#: Statuses in the order the search page lists their counts.
STATUSES = [s.value for s in Status]


def bind(site: Site, view: View) -> Callable[[Request], Response]:
    """An endpoint that calls ``view`` with the site."""

    def endpoint(request: Request) -> Response:
        return view(site, request)

    endpoint.__name__ = view.__name__
    return endpoint


def _param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


def parse_key(text: str) -> tuple[str, str]:
    """``"order_id=4711"`` → ``("order_id", "4711")`` (spaces around the name dropped).

    Raises:
      ConfigurationError: no ``=``, or nothing before it.
    """
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigurationError(f"a business key is searched as name=value, e.g. order_id=4711 (got {text!r})")
    return name.strip(), value.strip()


def search(site: Site, request: Request) -> Response:
    """Find jobs by id, ``name=value`` business key, actor and status (newest first)."""
    q = _param(request, "q")
    actor = _param(request, "actor")
    status = _param(request, "status")
    cursor = _param(request, "cursor")
    form = {"q": q or "", "actor": actor or "", "status": status or ""}
    context: dict[str, Any] = {"form": form, "statuses": STATUSES, "counts": site.store.count_jobs()}
    try:
        if status is not None and status not in STATUSES:
            raise ConfigurationError(f"unknown status {status!r} (known: {', '.join(STATUSES)})")
        records, next_cursor, note, corrupt = _search(site, q, actor, status, cursor)
    except ConfigurationError as exc:
        return site.page(request, "search.html", 400, error=str(exc), jobs=[], **context)
    except CorruptRecord as exc:
        return site.error(request, 422, "Corrupt record", str(exc))
    if isinstance(records, JobRecord):
        return RedirectResponse(f"/jobs/{quote(records.id, safe='')}", status_code=303)
    return site.page(request, "search.html", jobs=records, cursor=next_cursor, note=note, corrupt=corrupt, **context)


def _search(
    site: Site, q: str | None, actor: str | None, status: str | None, cursor: str | None
) -> tuple[JobRecord | list[JobRecord], str | None, str | None, list[str]]:
    """The records found, the next page's cursor, a note for the reader, the corrupt records skipped."""
    limit = site.page_size
    key = parse_key(q) if q is not None and "=" in q else None
    if q is None or key is not None:
        page = site.store.find_jobs(status=status, actor=actor, key=key, limit=limit, cursor=cursor)
        return page.items, page.cursor, None, list(page.corrupt)
    record = site.store.get_job(q)
    if record is not None and actor in (None, record.actor) and status in (None, record.status.value):
        return record, None, None, []
    found: dict[str, JobRecord] = {}
    corrupt: list[str] = []
    for name in site.search_keys:
        page = site.store.find_jobs(status=status, actor=actor, key=(name, q), limit=limit)
        corrupt += [i for i in page.corrupt if i not in corrupt]
        for item in page:
            found.setdefault(item.id, item)
    records = sorted(found.values(), key=lambda r: r.enqueued_at or datetime.min.replace(tzinfo=timezone.utc))
    records.reverse()
    if site.search_keys:
        keys = ", ".join(site.search_keys)
        note = f"No job has the id {q!r}; these jobs have it as one of their keys ({keys})."
    else:
        note = f"No job has the id {q!r}. To find jobs by a business key, type name=value, e.g. order_id={q}."
    return records[:limit], None, note, corrupt


def job(site: Site, request: Request) -> Response:
    """One job: status and since when, attempts, worker, last error, keys, args, history."""
    job_id = request.path_params["job_id"]
    try:
        record = site.store.get_job(job_id)
        letter = site.store.get_dead_letter(job_id) if record is None or record.status is Status.FAILED else None
    except CorruptRecord as exc:
        return site.error(request, 422, "Corrupt record", str(exc))
    if record is None and letter is None:
        detail = f"No job {job_id!r}: never recorded, or its record expired."
        return site.error(request, 404, "Job not found", detail)
    return site.page(request, "job.html", job=record or (letter.job if letter else None), letter=letter)


def dead_letters(site: Site, request: Request) -> Response:
    """Dead letters, newest first, filtered; counts by actor and error type, and by queue."""
    form = {name: _param(request, name) or "" for name in ("queue", "actor", "error", "since")}
    cursor = _param(request, "cursor")
    try:
        since = time_ago("since", form["since"] or None)
        with site.broker_lock:
            page = dead_api.find(
                site.store,
                site.broker,
                queue=form["queue"] or None,
                actor=form["actor"] or None,
                since=since,
                error=form["error"] or None,
                limit=site.page_size,
                cursor=cursor,
            )
    except ConfigurationError as exc:
        return site.page(request, "dead.html", 400, error=str(exc), form=form, letters=[], stats=None)
    stats = site.store.dead_letter_stats()
    return site.page(
        request, "dead.html", form=form, letters=page.items, cursor=page.cursor, stats=stats, corrupt=page.corrupt
    )


def dead_letter(site: Site, request: Request) -> Response:
    """One dead letter: the job, when and why it died, the message a replay enqueues."""
    job_id = request.path_params["job_id"]
    try:
        with site.broker_lock:
            letter = dead_api.show(site.store, site.broker, job_id)
    except NotFound as exc:
        return site.error(request, 404, "Dead letter not found", str(exc))
    except CorruptRecord as exc:
        return site.error(request, 422, "Corrupt record", str(exc))
    message = None
    if letter.message is not None:
        # The options a replay keeps; the arguments only as the job's redacted snapshot.
        options = {k: v for k, v in (letter.message.get("options") or {}).items() if k != "traceback"}
        message = {"actor": letter.message.get("actor_name"), "queue": letter.queue, "options": options}
    return site.page(request, "dead_letter.html", letter=letter, job=letter.job, message=message)


def queues(site: Site, request: Request) -> Response:
    """Per queue: waiting, delayed, dead, in flight, the oldest message's age."""
    held = site.store.dead_letter_queues()
    names = set(site.declared_queues) | set(held)
    stats = []
    if site.broker is not None:
        with site.broker_lock:
            if hasattr(site.broker, "namespace") and hasattr(site.broker, "client"):  # RedisBroker
                names |= set(discover_queues(site.broker))
            stats = queue_stats(site.broker, sorted(names), known=names)
    rows = [{"queue": s.queue, "stats": s, "held": held.get(s.queue, (0, 0))[0]} for s in stats]
    if site.broker is None:
        rows = [{"queue": q, "stats": None, "held": held.get(q, (0, 0))[0]} for q in sorted(names)]
    from ..control import paused

    return site.page(
        request, "queues.html", rows=rows, paused={p.name: p for p in paused(site.store) if p.kind == "queue"}
    )


def cron(site: Site, request: Request) -> Response:
    """The app's cron schedules: next run, last tick, the job it enqueued and its status."""
    if not site.schedules:
        return site.error(request, 404, "No cron schedules", "Start the page with --app MODULE to list its schedules.")
    last = site.store.cron_last([s.name for s in site.schedules])
    now = now_ms()
    rows = []
    for schedule in site.schedules:
        tick = last.get(schedule.name)
        record = site.store.get_job(tick.job_id) if tick is not None and tick.state == "sent" else None
        next_ms = schedule.next_fire_after(now)
        rows.append(
            {
                "schedule": schedule,
                "next_run": schedule.local_time(next_ms) if next_ms is not None else None,
                "tick": tick,
                "job": record,
            }
        )
    return site.page(request, "cron.html", rows=rows)


def activity(site: Site, request: Request) -> Response:
    """Jobs done, failed and dead-lettered, and queue waits, over the last hour or day."""
    from .activity import RANGES, load

    name = _param(request, "range") or "hour"
    actor = _param(request, "actor")
    if name not in RANGES:
        return site.error(request, 400, "Unknown range", f"range is one of: {', '.join(RANGES)} (got {name!r})")
    data = load(site.store, RANGES[name], actor, now_ms())
    return site.page(request, "activity.html", activity=data, ranges=list(RANGES.values()))


def workers(site: Site, request: Request) -> Response:
    """The worker processes the Watchdog knows: alive ones (with their jobs) and those found dead."""
    from ..control import paused
    from ..workers import workers as fleet

    return site.page(request, "workers.html", processes=fleet(site.store), paused=paused(site.store))
