"""``dramatiq-reliable workers``: the worker processes, their busy threads and current jobs."""

from __future__ import annotations

import click

from .._clock import format_duration, iso
from .._context import CliState, echo_json, run_command
from ..workers import WorkerStatus, workers


@click.command("workers")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of processes.")
@click.pass_obj
@run_command
def workers_command(state: CliState, as_json: bool) -> int:
    """Worker processes: host, pid, broker, queues, busy threads, the jobs they run now and for how
    long, their last heartbeat; and the processes found dead in the last hour (needs the Watchdog)."""
    found = workers(state.store())
    if as_json:
        echo_json([w.to_json() for w in found])
        return 0
    if not found:
        click.echo("No worker process runs the Watchdog on this store, or none has heartbeated yet.")
        return 0
    for w in found:
        click.echo(_block(w))
    return 0


def _block(w: WorkerStatus) -> str:
    threads = f"{w.busy}/{w.threads} threads busy" if w.threads else f"{w.busy} jobs running"
    where = f"{w.host or '?'} pid {w.pid or '?'} ({w.broker or '?'}; queues {', '.join(w.queues) or '-'})"
    if w.alive:
        head = f"{w.id}  alive  {where}  {threads}  last heartbeat {iso(w.last_heartbeat) or '?'}"
    else:
        recovering = "; its messages are being put back" if w.recovering else ""
        head = f"{w.id}  DEAD since {iso(w.dead_since)}  {where}  {w.busy} jobs abandoned{recovering}"
    lines = [head]
    for j in w.jobs:
        age = format_duration(j.age) if j.age is not None else "?"
        lines.append(f"    {j.id}  {j.actor or '?'}  attempt {j.attempt or '?'}  running {age}  ({j.status or '?'})")
    if w.busy > len(w.jobs):
        lines.append(f"    … and {w.busy - len(w.jobs)} more")
    return "\n".join(lines)
