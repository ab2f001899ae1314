"""``dramatiq-reliable jobs show|list``."""

from __future__ import annotations

import click

from .._clock import time_ago
from .._context import CliState, echo_json, run_command
from ..errors import ConfigurationError, NotFound
from ..status import Status
from .render import corrupt_note, job_detail, job_table


@click.group()
def jobs() -> None:
    """Find jobs and see where they are, since when, and why."""


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_obj
@run_command
def show(state: CliState, job_id: str, as_json: bool) -> int:
    """Show one job: status and since when, attempts, worker, last error, keys, history."""
    record = state.store().get_job(job_id)
    if record is None:
        raise NotFound(f"no job {job_id!r} (never recorded, or its record expired)")
    if as_json:
        echo_json(record.to_json())
    else:
        click.echo(job_detail(record))
    return 0


def parse_key(text: str | None) -> tuple[str, str] | None:
    """``"order_id=4711"`` → ``("order_id", "4711")``."""
    if text is None:
        return None
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigurationError(f"--key takes NAME=VALUE, e.g. --key order_id=4711 (got {text!r})")
    return (name.strip(), value)


@jobs.command("list")
@click.option("--status", type=click.Choice([s.value for s in Status]), help="Only jobs in this status.")
@click.option("--actor", metavar="NAME", help="Only jobs of this actor.")
@click.option("--key", metavar="NAME=VALUE", help="Only jobs with this business key (from the actor's track=).")
@click.option("--queue", metavar="NAME", help="Only jobs of this queue.")
@click.option("--since", metavar="DURATION", help="Only jobs enqueued in the last DURATION (30m, 2h, 7d).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most this many.")
@click.option("--cursor", metavar="CURSOR", help="Continue a previous listing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of records.")
@click.pass_obj
@run_command
def list_(
    state: CliState,
    status: str | None,
    actor: str | None,
    key: str | None,
    queue: str | None,
    since: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> int:
    """List jobs, newest first, filtered by status, actor, business key, queue and age."""
    page = state.store().find_jobs(
        status=status,
        actor=actor,
        key=parse_key(key),
        limit=limit,
        cursor=cursor,
        queue=queue,
        since=time_ago("--since", since),
    )
    if page.corrupt:
        click.echo(corrupt_note(page.corrupt, "jobs show"), err=True)
    if as_json:
        echo_json([record.to_json() for record in page])
        return 0
    if not page.items:
        click.echo("No jobs match." if not page.corrupt else "No readable jobs match.")
        return 0
    click.echo(job_table(page.items))
    from .control import paused_lines

    for line in paused_lines(state, queues={r.queue for r in page}, actors={r.actor for r in page}):
        click.echo(line)
    if page.cursor:
        click.echo(f"\nMore: add --cursor {page.cursor}")
    return 0
