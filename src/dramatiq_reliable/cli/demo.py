"""``dramatiq-reliable demo``."""

from __future__ import annotations

import click

from .._context import CliState, run_command


@click.command()
@click.pass_obj
@run_command
def demo(state: CliState) -> int:
    """Run a job that succeeds, one that fails once, one that is dead-lettered, and a duplicate.

    With no --broker/--store it needs no server (StubBroker + MemoryStore, a worker in this
    process). Given them (before the subcommand), it uses the real servers and leaves the records
    to explore with `jobs list`.
    """
    from ..demo import run_demo

    return run_demo(state.broker_url, state.store_url, echo=click.echo)
