"""``dramatiq-reliable queues``: the backlog of each queue, and a health check on it."""

from __future__ import annotations

from typing import Any

import click

from .._clock import format_duration, parse_duration
from .._context import CliState, echo_json, run_command
from ..backlog import QueueStats, discover_queues, queue_stats
from ..errors import ConfigurationError
from .control import paused_lines


@click.command("queues")
@click.option(
    "--queue",
    "-q",
    "names",
    multiple=True,
    metavar="NAME",
    help="A queue to show (repeatable). Default: the --app's queues; without --app, those the broker "
    "lists (every queue holding messages or dead letters on Redis; on RabbitMQ, those its management "
    "API lists: rabbitmq-plugins enable rabbitmq_management).",
)
@click.option(
    "--app",
    metavar="MODULE[:BROKER]",
    help="Import this app (from the current directory, as dramatiq does) for its declared queues "
    "(and its broker, without --broker).",
)
@click.option(
    "--namespace",
    metavar="NS",
    help="The RedisBroker's namespace. [default: the --broker URL's ?namespace=, else dramatiq]",
)
@click.option("--check", is_flag=True, help="Exit 1 when a queue crosses a limit (health probe, cron).")
@click.option("--max-age", metavar="DURATION", help="Limit on the oldest waiting message's age, e.g. 10m.")
@click.option("--max-depth", type=click.IntRange(min=0), metavar="N", help="Limit on the messages waiting.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per queue.")
@click.pass_obj
@run_command
def queues(
    state: CliState,
    names: tuple[str, ...],
    app: str | None,
    namespace: str | None,
    check: bool,
    max_age: str | None,
    max_depth: int | None,
    as_json: bool,
) -> int:
    """Per queue: messages waiting, delayed, dead, in flight, and the oldest one's age.

    Nothing is taken from a queue to look at it: on RabbitMQ the oldest message's age comes
    from the management API (messages published where the bundle is installed carry their
    publish time); where it is unknown, a --max-age check fails rather than pass blindly.

    \b
    Exit codes: 0 ok, 1 a limit is crossed, a queue does not exist, or no queue was found
    (with --check), 2 usage, 3 broker unreachable.
    Example: dramatiq-reliable --broker redis://10.0.0.5:6379/0 queues --check --max-age 10m
    """
    age_limit = _duration(max_age) if max_age is not None else None
    if check and age_limit is None and max_depth is None:
        raise ConfigurationError("--check needs --max-age and/or --max-depth")
    broker, declared = _broker(state, app, namespace)
    if state.broker_url:
        from ..brokers import ping_broker

        ping_broker(broker)  # after the usage checks: an unreachable broker is one line naming its URL
    # An app's check covers the app's queues: another app's queue on the same server is not its business.
    wanted = list(dict.fromkeys(names)) or declared or _all_queues(broker)
    stats = queue_stats(broker, wanted, known=declared) if wanted else []
    if not names:  # a listed queue deleted since is gone, not missing; a declared one is missing
        stats = [s for s in stats if s.exists or s.queue in declared]
    problems = {s.queue: s.problems(max_age=age_limit, max_depth=max_depth) for s in stats}
    if check and not stats:
        problems[""] = ["no queues found"]
    if as_json:
        echo_json([{**s.to_json(), "problems": problems[s.queue]} for s in stats])
    elif not stats:
        click.echo("No queues found.")
    else:
        click.echo(_table(stats, problems))
        for line in paused_lines(state, queues={s.queue for s in stats}, actors=None):
            click.echo(line)
    failed = any(problems.values())
    if check and failed and not as_json:
        for queue, found in problems.items():
            for problem in found:
                click.echo(f"CHECK FAILED: {f'queue {queue}: ' if queue else ''}{problem}", err=True)
    return 1 if check and failed else 0


def _all_queues(broker: Any) -> list[str]:
    """The queues the broker lists."""
    return sorted(discover_queues(broker))


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigurationError(f"--max-age: {exc}") from None


def _broker(state: CliState, app: str | None, namespace: str | None) -> tuple[Any, list[str]]:
    """The broker to read (``--broker``, else the app's) and the app's declared queues."""
    declared: list[str] = []
    app_broker = None
    if app is not None:
        from ._app import load_app

        app_broker = load_app(app)  # from the current directory, as `dramatiq app` imports it
        declared = sorted(q for q in app_broker.get_declared_queues() if not q.endswith((".DQ", ".XQ")))
    if state.broker_url:
        from ..brokers import broker_from_url, check_broker_url

        options = {"namespace": namespace} if namespace and check_broker_url(state.broker_url) == "redis" else {}
        broker = broker_from_url(state.broker_url, **options)
        state._broker = broker  # closed with the command
        return broker, declared
    if app_broker is None:
        raise ConfigurationError("queues needs --broker URL (or DRAMATIQ_RELIABLE_BROKER), or --app MODULE")
    return app_broker, declared


def _table(stats: list[QueueStats], problems: dict[str, list[str]]) -> str:
    def num(value: int | None) -> str:
        return "?" if value is None else str(value)

    header = ("QUEUE", "DEPTH", "DELAYED", "DEAD", "IN FLIGHT", "CONSUMERS", "OLDEST", "")
    rows = []
    for s in stats:
        if not s.exists:
            rows.append((s.queue, "-", "-", "-", "-", "-", "-", "does not exist"))
            continue
        oldest = "-" if not s.depth else ("?" if s.oldest_age is None else format_duration(s.oldest_age))
        rows.append(
            (
                s.queue,
                num(s.depth),
                num(s.delayed),
                num(s.dead),
                num(s.in_flight),
                num(s.consumers),
                oldest,
                "; ".join(problems.get(s.queue, [])),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        if row is not header and row[-1]:
            cells[-1] = click.style(cells[-1], fg="red", bold=True)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
