"""``dramatiq-reliable dead list|show|replay|purge|stats``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from .. import dead as api
from .._clock import time_ago
from .._context import CliState, echo_json, run_command
from ..errors import ConfigurationError
from ..records import DeadResult
from . import dead_render as render
from .render import corrupt_note

#: Dead letters read per page when collecting ``--all``.
PAGE = 1_000


def _broker(state: CliState, *, required: bool) -> Any:
    if state.broker_url or required:
        return state.broker()
    return None


def _store_only_note(state: CliState) -> None:
    if not state.broker_url:
        click.echo(
            "note: no --broker given: the store's copy only (dead letters it did not record are not shown)",
            err=True,
        )


@click.group()
def dead() -> None:
    """Dead letters: what died, why, and put it back (--broker URL or DRAMATIQ_RELIABLE_BROKER)."""


@dead.command("list")
@click.option("--queue", metavar="NAME", help="Only those dead-lettered from this queue.")
@click.option("--actor", metavar="NAME", help="Only those of this actor.")
@click.option("--since", metavar="DURATION", help="Only those dead-lettered in the last DURATION (30m, 2h, 7d).")
@click.option("--error", "error", metavar="TEXT", help="Only those whose error (type: message) contains TEXT.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most this many.")
@click.option("--cursor", metavar="CURSOR", help="Continue a previous listing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of dead letters.")
@click.pass_obj
@run_command
def list_(
    state: CliState,
    queue: str | None,
    actor: str | None,
    since: str | None,
    error: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> int:
    """List dead letters, newest first, with the error that killed each."""
    since_at = time_ago("--since", since)
    page = api.find(
        state.store(),
        _broker(state, required=False),
        queue=queue,
        actor=actor,
        since=since_at,
        error=error,
        limit=limit,
        cursor=cursor,
    )
    _store_only_note(state)
    if page.corrupt:
        click.echo(corrupt_note(page.corrupt, "dead show"), err=True)
    if as_json:
        echo_json([render.shown_json(letter) for letter in page])
        return 0
    if not page.items:
        click.echo("No dead letters match.")
        return 0
    click.echo(render.table(page.items))
    if page.cursor:
        click.echo(f"\nMore: add --cursor {page.cursor}")
    return 0


@dead.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the dead letter as JSON.")
@click.pass_obj
@run_command
def show(state: CliState, job_id: str, as_json: bool) -> int:
    """Show one dead letter: the job, its final error and traceback, the message."""
    letter = api.show(state.store(), _broker(state, required=False), job_id)
    if as_json:
        echo_json(render.shown_json(letter))
    else:
        click.echo(render.detail(letter))
    return 0


def _select(
    state: CliState,
    ids: tuple[str, ...],
    select_all: bool,
    *,
    queue: str | None,
    actor: str | None,
    before: datetime | None = None,
    since: datetime | None = None,
    error: str | None = None,
) -> list[str]:
    """The ids given, or every dead letter matching the filters (``--all``, ``--error``, ``--since``
    or ``--older-than`` select in bulk; ``--queue`` and ``--actor`` narrow a bulk selection)."""
    bulk = select_all or error is not None or since is not None or before is not None
    if ids and bulk:
        raise ConfigurationError(
            "give ids, or --all, --error, --since or --older-than, not both: those select in bulk (as with --all)"
        )
    if not ids and not bulk:
        raise ConfigurationError("give the ids of dead letters, or --all or --error TEXT (see --help)")
    if error is not None and not error.strip():
        raise ConfigurationError("--error needs a text to look for in the errors")
    if ids:
        if queue or actor:
            raise ConfigurationError("--queue and --actor narrow --all, --error, --since or --older-than")
        return list(ids)
    store, broker = state.store(), state.broker()
    api.sync(store, broker, queues=[queue] if queue else None)
    out: list[str] = []
    cursor = None
    while True:
        page = store.dead_letters(
            queue=queue, actor=actor, before=before, since=since, error=error, limit=PAGE, cursor=cursor
        )
        out += [letter.id for letter in page]
        cursor = page.cursor
        if cursor is None:
            return out


def _confirm(what: str, ids: list[str], select_all: bool, yes: bool, dry_run: bool) -> None:
    if yes or dry_run or not ids or (len(ids) == 1 and not select_all):
        return
    n = len(ids)
    click.confirm(f"{what} {n} dead letter{'s' if n != 1 else ''}?", abort=True, err=True)


def _report(results: list[DeadResult], as_json: bool) -> int:
    if as_json:
        echo_json([r.to_json() for r in results])
    elif results:
        click.echo(render.results_view(results))
    else:
        click.echo("No dead letters match.")
    if all(r.ok for r in results):
        return 0
    return 3 if any(r.outcome == "unreachable" for r in results) else 1


def _bulk_command(name: str, verb: str) -> Callable[[Callable[..., int]], click.Command]:
    """The options ``replay`` and ``purge`` share: ids, or a bulk selection narrowed by filters."""

    def wrap(fn: Callable[..., int]) -> click.Command:
        options = [
            click.argument("ids", nargs=-1, metavar="[ID]..."),
            click.option(
                "--all", "select_all", is_flag=True, help="Every dead letter (narrowed by the options below)."
            ),
            click.option("--error", "error", metavar="TEXT", help="Those whose error (type: message) contains TEXT."),
            click.option("--since", metavar="DURATION", help="Those dead-lettered in the last DURATION (30m, 2h, 7d)."),
            click.option("--older-than", metavar="DURATION", help="Those dead for longer than DURATION (e.g. 7d)."),
            click.option("--queue", metavar="NAME", help="With a bulk selection: only those of this queue."),
            click.option("--actor", metavar="NAME", help="With a bulk selection: only those of this actor."),
            click.option("--dry-run", is_flag=True, help=f"Say what would be {verb}; change nothing."),
            click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation."),
            click.option("--json", "as_json", is_flag=True, help="Print a JSON array of results, one per id."),
        ]
        command: Any = click.pass_obj(run_command(fn))
        for option in reversed(options):
            command = option(command)
        return dead.command(name)(command)

    return wrap


def _bulk(state: CliState, what: str, action: Any, ids: tuple[str, ...], select_all: bool, **options: Any) -> int:
    """Select (ids or a bulk selection), confirm, run ``action`` on the selection and report."""
    selected = _select(
        state,
        ids,
        select_all,
        queue=options["queue"],
        actor=options["actor"],
        before=time_ago("--older-than", options["older_than"]),
        since=time_ago("--since", options["since"]),
        error=options["error"],
    )
    dry_run = options["dry_run"]
    _confirm(what, selected, not ids, options["yes"], dry_run)
    # Not pinged: each id's line says what an unreachable broker prevented.
    results = action(state.store(), state.broker(ping=False), selected, dry_run=dry_run) if selected else []
    return _report(results, options["as_json"])


@_bulk_command("replay", "replayed")
def replay(state: CliState, ids: tuple[str, ...], select_all: bool, **options: Any) -> int:
    """Put dead letters back on their queues, with their job ids (attempts start again).

    \b
    By id, or in bulk: --all, or --error TEXT (e.g. once the cause of that error is fixed),
    --since / --older-than, narrowed by --queue and --actor.

    \b
    Exit codes: 0 all replayed, 1 some were not (not found, gone, malformed, …),
    3 the broker or the store could not be reached (those stay dead letters).
    """
    return _bulk(state, "Replay", api.replay, ids, select_all, **options)


@_bulk_command("purge", "purged")
def purge(state: CliState, ids: tuple[str, ...], select_all: bool, **options: Any) -> int:
    """Delete dead letters for good. Live and in-flight messages are never touched.

    \b
    By id, or in bulk: --all, --error TEXT, --since / --older-than, narrowed by --queue and --actor.
    """
    return _bulk(state, "Purge", api.purge, ids, select_all, **options)


@dead.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_obj
@run_command
def stats(state: CliState, as_json: bool) -> int:
    """Count dead letters by actor and error type, and per queue."""
    result = api.stats(state.store(), _broker(state, required=False))
    _store_only_note(state)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(render.stats_view(result))
    return 0
