"""``dramatiq-reliable cron list APP_MODULE`` and ``dramatiq-reliable scheduler APP_MODULE``."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast

import click
import dramatiq

from .._clock import ago, now_ms, parse_duration
from .._context import CliState, echo_json, run_command
from ..actors.cron import Schedule, registry_of
from ..brokers import ping_broker
from ..records import CronTick
from ..store.base import Store
from ._app import load_app, path_option, store_of

LOG_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """Seconds, or a duration such as ``90s``, ``5m``, ``1h``."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _schedules(state: CliState, app: str, paths: tuple[str, ...]) -> tuple[dramatiq.Broker, Store, list[Schedule]]:
    broker = load_app(app, paths)
    schedules = list(registry_of(broker))
    store = store_of(broker)
    if store is None:
        store = state.store()
    return broker, store, schedules


def _no_schedules(app: str) -> int:
    click.echo(f"error: {app} declares no cron schedules (@dr.cron) on its broker", err=True)
    return 1


@click.group("cron")
def cron_group() -> None:
    """Periodic jobs declared with @dr.cron."""


@cron_group.command("list")
@click.argument("app")
@path_option()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of schedules.")
@click.pass_obj
@run_command
def list_(state: CliState, app: str, paths: tuple[str, ...], as_json: bool) -> int:
    """List the schedules of APP (module or module:broker): next run, last tick, its job and status.

    The store is the one the app installs (dr.install), else --store.
    """
    _broker, store, schedules = _schedules(state, app, paths)
    if not schedules:
        return _no_schedules(app)
    store.ping()
    last = store.cron_last([s.name for s in schedules])
    rows = [_row(store, s, last.get(s.name)) for s in schedules]
    if as_json:
        echo_json(rows)
        return 0
    header = ("NAME", "ACTOR", "SCHEDULE", "TIMEZONE", "NEXT RUN", "LAST TICK", "LAST JOB", "STATUS")
    table = [
        (
            r["name"],
            r["actor"],
            r["expression"],
            r["timezone"],
            _at(r["next_run"]),
            _at(r["last_tick"]["fire_at"]) if r["last_tick"] else "never",
            r["last_job"]["id"] if r["last_job"] else "-",
            r["last_job"]["status"] if r["last_job"] else "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _row(store: Store, schedule: Schedule, tick: CronTick | None) -> dict[str, Any]:
    next_ms = schedule.next_fire_after(now_ms())
    last_job = None
    if tick is not None:
        if tick.state in ("missed", "skipped", "paused"):
            status = tick.state
        else:
            record = store.get_job(tick.job_id)
            status = record.status.value if record is not None else f"{tick.state} (no job record)"
        last_job = {"id": tick.job_id, "status": status}
    return {
        "name": schedule.name,
        "actor": schedule.actor_name,
        "expression": schedule.expression,
        "timezone": schedule.timezone,
        "args": list(schedule.args),
        "kwargs": dict(schedule.kwargs),
        "next_run": schedule.local_time(next_ms).isoformat() if next_ms is not None else None,
        "last_tick": tick.to_json() if tick is not None else None,
        "last_job": last_job,
    }


def _at(text: str | None) -> str:
    if not text:
        return "-"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return f"{moment.isoformat()} ({ago(moment.timestamp() * 1000)})"


@cron_group.command("run")
@click.argument("app")
@click.argument("name")
@path_option()
@click.pass_obj
@run_command
def run(state: CliState, app: str, name: str, paths: tuple[str, ...]) -> int:
    """Fire one tick of schedule NAME of APP now (even if paused); claimed like any tick, so never twice."""
    from ..scheduler import run_now

    broker, store, _ = _schedules(state, app, paths)
    outcome, job_id = run_now(broker, store, name)
    if outcome == "enqueued":
        click.echo(f"{name}: tick enqueued as job {job_id}")
        return 0
    if outcome == "taken":
        click.echo(f"{name}: this second's tick was already claimed (job {job_id}); nothing more was enqueued")
        return 1
    click.echo(f"error: {name}: tick {outcome} (job {job_id}); see the log above", err=True)
    return 3 if outcome == "deferred" else 1


def _switch(state: CliState, app: str, name: str, paths: tuple[str, ...], on: bool, by: str | None) -> int:
    from ..control import operator, pause_cron, resume_cron

    _broker, store, schedules = _schedules(state, app, paths)
    if name not in {s.name for s in schedules}:
        known = ", ".join(sorted(s.name for s in schedules)) or "none"
        click.echo(f"error: no cron schedule {name!r} in {app} (known: {known})", err=True)
        return 1
    result = (pause_cron if on else resume_cron)(store, name, by=by or operator())
    when = result.since.isoformat() if result.since else "?"
    if on:
        click.echo(
            f"{name}: paused (since {when})"
            if result.changed
            else f"{name}: already paused since {when}; nothing changed"
        )
    else:
        click.echo(f"{name}: resumed" if result.changed else f"{name}: not paused; nothing changed")
    return 0


@cron_group.command("pause")
@click.argument("app")
@click.argument("name")
@path_option()
@click.option("--by", metavar="NAME", help="Who pauses, for the records. [default: user@host]")
@click.pass_obj
@run_command
def pause(state: CliState, app: str, name: str, paths: tuple[str, ...], by: str | None) -> int:
    """Pause schedule NAME of APP: schedulers record its ticks as paused and enqueue nothing."""
    return _switch(state, app, name, paths, True, by)


@cron_group.command("resume")
@click.argument("app")
@click.argument("name")
@path_option()
@click.option("--by", metavar="NAME", help="Who resumes, for the records. [default: user@host]")
@click.pass_obj
@run_command
def resume(state: CliState, app: str, name: str, paths: tuple[str, ...], by: str | None) -> int:
    """Resume a paused schedule: its next tick is enqueued as usual."""
    return _switch(state, app, name, paths, False, by)


@click.command("scheduler")
@click.argument("app")
@path_option()
@click.option(
    "--misfire-grace",
    metavar="DURATION",
    callback=_duration,
    default="60s",
    show_default=True,
    help="How late a tick may still be enqueued (a scheduler starting late, a takeover). Older ticks are skipped.",
)
@click.option(
    "--coalesce/--no-coalesce",
    default=True,
    show_default=True,
    help="Enqueue only the latest of several ticks of a schedule due at once (e.g. after every scheduler was down).",
)
@click.option(
    "--claim-lease",
    metavar="DURATION",
    callback=_duration,
    default="15s",
    show_default=True,
    help="How long a claimed tick may stay unenqueued before another scheduler takes it over.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every tick, including those other schedulers claimed.")
@click.pass_obj
@run_command
def scheduler_command(
    state: CliState,
    app: str,
    paths: tuple[str, ...],
    misfire_grace: float,
    coalesce: bool,
    claim_lease: float,
    verbose: bool,
) -> int:
    """Run the cron schedules of APP (module or module:broker); safe to run on several hosts at once.

    \b
    Each tick is claimed in the store (the one the app installs with dr.install, else --store)
    and enqueued by exactly one scheduler, with the app's broker and middleware; a tick whose
    scheduler died is taken over by another. Stops gracefully on SIGTERM or SIGINT.
    """
    from ..scheduler import Scheduler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    if not verbose:  # as dramatiq does: our own lines say what failed
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    broker, store, schedules = _schedules(state, app, paths)
    if not schedules:
        return _no_schedules(app)
    scheduler = Scheduler(broker, store, misfire_grace=misfire_grace, coalesce=coalesce, claim_lease=claim_lease)
    store.ping()
    ping_broker(broker)
    if hasattr(broker, "state"):  # RabbitMQ: the ping's connection belongs to this thread; ticks use their own
        del cast(Any, broker).connection
    try:
        scheduler.run()
    finally:
        store.close()
        broker.close()
    return 0
