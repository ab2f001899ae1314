"""``dramatiq-reliable jobs cancel|retry-now``, ``pause``, ``resume``, ``paused``.

Exit codes: ``jobs cancel`` exits 0 when every job named is cancelled (already cancelled ones
included), 1 if one is unknown or already finished otherwise, or no job matches the filters.
``pause`` and ``resume`` exit 0 when the actor or queue is in the state asked for, even if it
already was (one line says nothing changed): scripts can run them without checking first.
``jobs retry-now`` exits 1 for a job that is not ``retrying``.
"""

from __future__ import annotations

import click

from .. import control
from .._clock import iso
from .._context import CliState, echo_json, run_command
from ..errors import ConfigurationError, DramatiqReliableError
from .jobs import parse_key

CANCELLABLE = sorted(str(s) for s in control.CANCELLABLE)


def paused_lines(state: CliState, *, queues: set[str], actors: set[str] | None) -> list[str]:
    """``queue q: paused since …`` for the paused queues and actors named (every paused actor for
    ``actors=None``), when a store was given; nothing if it cannot be read (the listing stands)."""
    if not state.store_url:
        return []
    try:
        items = control.paused(state.store())
    except DramatiqReliableError:
        return []
    return [
        f"{p.kind} {p.name}: paused since {iso(p.since)}" + (f" by {p.by}" if p.by else "")
        for p in items
        if (p.kind == "queue" and p.name in queues) or (p.kind == "actor" and (actors is None or p.name in actors))
    ]


def _who(by: str | None) -> str:
    return by or control.operator()


@click.command("cancel")
@click.argument("ids", nargs=-1)
@click.option("--actor", metavar="NAME", help="Cancel every unfinished job of this actor.")
@click.option("--key", metavar="NAME=VALUE", help="Cancel every unfinished job with this business key.")
@click.option("--status", type=click.Choice(CANCELLABLE), help="Only jobs in this status.")
@click.option("--by", metavar="NAME", help="Who cancels, for the records. [default: user@host]")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of results, one per job.")
@click.pass_obj
@run_command
def cancel(
    state: CliState,
    ids: tuple[str, ...],
    actor: str | None,
    key: str | None,
    status: str | None,
    by: str | None,
    yes: bool,
    as_json: bool,
) -> int:
    """Cancel jobs: queued, delayed or retrying ones never run; running ones are asked to stop.

    \b
    By id:      dramatiq-reliable jobs cancel ID [ID...]
    In bulk:    dramatiq-reliable jobs cancel --actor send_invoice [--status queued] [--yes]
    A running job stops at its next dr.once step (at once for actors with cancellable="interrupt").
    Workers hear of it within one heartbeat interval.
    """
    selectors = actor is not None or key is not None or status is not None
    if ids and selectors:
        raise ConfigurationError("give job ids or filters (--actor, --key, --status), not both")
    if not ids and not selectors:
        raise ConfigurationError("give job ids, or --actor, --key or --status to cancel in bulk")
    store = state.store()
    selected = list(ids) or control.select(store, actor=actor, key=parse_key(key), status=status)
    if not selected:
        click.echo("No unfinished job matches; nothing changed.", err=True)
        return 1
    if not yes and (selectors or len(selected) > 1):
        n = len(selected)
        click.confirm(f"Cancel {n} job{'s' if n != 1 else ''}?", abort=True, err=True)
    results = control.cancel(store, selected, by=_who(by))
    if as_json:
        echo_json([r.to_json() for r in results])
    else:
        for r in results:
            click.echo(_cancel_line(r))
    return 0 if all(r.state == "cancelled" for r in results) else 1


def _cancel_line(r: control.ControlResult) -> str:
    if r.changed:
        return f"{r.id}: cancelled (was {r.was})" + ("; its worker is asked to stop it" if r.was == "running" else "")
    if r.state == "unknown":
        return f"{r.id}: no such job (never recorded, or its record expired); nothing changed"
    if r.state == "cancelled":
        return f"{r.id}: already cancelled; nothing changed"
    return f"{r.id}: already finished ({r.state}); nothing changed"


@click.command("retry-now")
@click.argument("job_id")
@click.option("--by", metavar="NAME", help="Who asks, for the records. [default: user@host]")
@click.pass_obj
@run_command
def retry_now(state: CliState, job_id: str, by: str | None) -> int:
    """Run a job that waits for its next retry now (once: its delayed message is moved, not copied)."""
    result = control.retry_now(state.store(), job_id, by=_who(by))
    if result.state == "now":
        click.echo(f"{job_id}: runs now (its worker moves it within one heartbeat interval)")
        return 0
    if result.state == "unknown":
        click.echo(f"error: no job {job_id!r} (never recorded, or its record expired)", err=True)
    else:
        click.echo(f"error: job {job_id} is {result.state}, not retrying; nothing changed", err=True)
    return 1


def _target_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("--queue", metavar="NAME", help="Every actor of this queue.")(fn)
    fn = click.option("--actor", metavar="NAME", help="This actor.")(fn)
    return fn


@click.command("pause")
@_target_options
@click.option("--by", metavar="NAME", help="Who pauses, for the records. [default: user@host]")
@click.pass_obj
@run_command
def pause(state: CliState, actor: str | None, queue: str | None, by: str | None) -> int:
    """Pause an actor or a queue fleet-wide: its messages wait, their attempts are not spent.

    Workers hold its deliveries (put back with a delay) within one heartbeat interval; jobs
    already running go on. Pausing a paused one changes nothing (exit 0).
    """
    result = control.pause(state.store(), actor=actor, queue=queue, by=_who(by))
    since = iso(result.since)
    if result.changed:
        click.echo(f"{result.kind} {result.name}: paused (since {since})")
    else:
        click.echo(f"{result.kind} {result.name}: already paused since {since}; nothing changed")
    return 0


@click.command("resume")
@_target_options
@click.option("--by", metavar="NAME", help="Who resumes, for the records. [default: user@host]")
@click.pass_obj
@run_command
def resume(state: CliState, actor: str | None, queue: str | None, by: str | None) -> int:
    """Resume a paused actor or queue: its held messages run as their hold ends (at most 30 s)."""
    result = control.resume(state.store(), actor=actor, queue=queue, by=_who(by))
    if result.changed:
        click.echo(f"{result.kind} {result.name}: resumed (paused since {iso(result.since)})")
    else:
        click.echo(f"{result.kind} {result.name}: not paused; nothing changed")
    return 0


@click.command("paused")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
@run_command
def paused(state: CliState, as_json: bool) -> int:
    """List the paused actors and queues, and since when."""
    items = control.paused(state.store())
    if as_json:
        echo_json([p.to_json() for p in items])
    elif not items:
        click.echo("Nothing is paused.")
    else:
        for p in items:
            click.echo(f"{p.kind:<6} {p.name}  paused since {iso(p.since)}" + (f" by {p.by}" if p.by else ""))
    return 0
