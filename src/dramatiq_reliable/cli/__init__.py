"""The ``dramatiq-reliable`` command: a thin layer over the library's calls.

Every command calls the same functions a user can call (``store.get_job``,
``store.find_jobs``, …) and maps errors to exit codes, one line on stderr each:

* ``RET_OK`` (0): success.
* ``RET_FAILED`` (1): a check failed, or an id was not found.
* ``RET_USAGE`` (2): bad usage, a malformed URL or option included.
* ``RET_CONNECT`` (3): the store or the broker cannot be reached (as ``dramatiq``'s own).

Environment variables are read here and nowhere else: ``DRAMATIQ_RELIABLE_STORE`` and
``DRAMATIQ_RELIABLE_BROKER``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .._context import CliState, run_command
from ..errors import ConfigurationError
from .control import cancel, pause, paused, resume, retry_now
from .cron import cron_group, scheduler_command
from .dead import dead
from .demo import demo
from .jobs import jobs
from .metrics import metrics
from .queues import queues
from .web import web
from .workers import workers_command

#: Exit codes.
RET_OK = 0
RET_FAILED = 1
RET_USAGE = 2
RET_CONNECT = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--store",
    "store_url",
    envvar="DRAMATIQ_RELIABLE_STORE",
    metavar="URL",
    help=(
        "Store URL: redis://host:port/db, redis+sentinel://host:26379/service[/db], "
        "redis+cluster://host:port[,host:port…] (a Redis Cluster) or memory://. "
        "[env DRAMATIQ_RELIABLE_STORE; default redis://127.0.0.1:6379/1]"
    ),
)
@click.option(
    "--broker",
    "broker_url",
    envvar="DRAMATIQ_RELIABLE_BROKER",
    metavar="URL",
    help="Broker URL: redis://… or amqp://…. [env DRAMATIQ_RELIABLE_BROKER]",
)
@click.version_option(package_name="dramatiq-reliable")
@click.pass_context
def cli(ctx: click.Context, store_url: str | None, broker_url: str | None) -> None:
    """Inspect and operate the jobs of Dramatiq workers that use dramatiq-reliable.

    \b
    Exit codes: 0 ok, 1 check failed or not found, 2 usage, 3 store or broker unreachable.
    """
    ctx.obj = CliState(store_url=store_url, broker_url=broker_url)


cli.add_command(jobs)
jobs.add_command(cancel)
jobs.add_command(retry_now)
cli.add_command(pause)
cli.add_command(resume)
cli.add_command(paused)
cli.add_command(workers_command)
cli.add_command(demo)
cli.add_command(cron_group)
cli.add_command(scheduler_command)
cli.add_command(queues)
cli.add_command(dead)
cli.add_command(metrics)
cli.add_command(web)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return its exit code."""
    try:
        result: Any = cli.main(args=argv, prog_name="dramatiq-reliable", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return RET_FAILED
    except click.exceptions.NoArgsIsHelpError as exc:
        # A command (or group) given nothing to do: its help, without calling it an error. Exit 2
        # all the same, as for any usage that did not run a command: a script that calls the
        # bare command by mistake must not take it for a success.
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return RET_USAGE
    except click.NoSuchOption as exc:
        click.echo(f"error: {_no_such_option(exc)}", err=True)
        return RET_USAGE
    except click.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return RET_USAGE
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return RET_USAGE
    except ConfigurationError as exc:  # raised while the group itself was set up
        click.echo(f"error: {exc}", err=True)
        return RET_USAGE
    return int(result or 0)


def _no_such_option(exc: click.NoSuchOption) -> str:
    """The message of an unknown option; a global one given after the subcommand says where it goes."""
    name = exc.option_name.split("=", 1)[0]
    if exc.ctx is not None and exc.ctx.parent is not None:
        for param in cli.params:
            if isinstance(param, click.Option) and name in param.opts:
                root, _, sub = exc.ctx.command_path.partition(" ")
                value = f" {param.metavar}" if param.metavar else ""
                return f"{name} is a global option: put it before the subcommand ({root} {name}{value} {sub} ...)"
    hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
    return f"{exc.format_message()}{hint}"


def entry() -> None:  # pragma: no cover - the console script
    sys.exit(main())


__all__ = ["RET_CONNECT", "RET_FAILED", "RET_OK", "RET_USAGE", "cli", "main", "run_command"]
