"""``dramatiq-reliable metrics``: the Prometheus exporter."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from .._context import CliState, run_command


@click.command("metrics")
@click.option("--port", type=click.IntRange(0, 65535), default=9191, show_default=True, help="Port to listen on.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 for every interface (in a container, for a remote Prometheus).",
)
@click.option(
    "--multiproc-dir",
    envvar="PROMETHEUS_MULTIPROC_DIR",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="The folder the workers write their metrics to (dr.enable_metrics(DIR)). [env PROMETHEUS_MULTIPROC_DIR]",
)
@click.option(
    "--queue",
    "-Q",
    "queues",
    multiple=True,
    metavar="NAME",
    help="Queues to report (repeatable). Default: every queue found on a Redis broker; none on RabbitMQ.",
)
@click.option(
    "--namespace",
    metavar="NS",
    help="The RedisBroker's namespace. [default: the --broker URL's ?namespace=, else dramatiq]",
)
@click.option("--once", is_flag=True, help="Print one scrape to stdout and exit (no server).")
@click.pass_obj
@run_command
def metrics(
    state: CliState,
    port: int,
    host: str,
    multiproc_dir: str | None,
    queues: tuple[str, ...],
    namespace: str | None,
    once: bool,
) -> int:
    """Serve Prometheus metrics on http://HOST:PORT/metrics.

    \b
    The workers' counters and histograms (summed over their processes, read from
    --multiproc-dir), and gauges read from the store and the broker at each scrape: job
    records per status (stuck, abandoned, failed, ...), queue depth, delayed messages,
    dead letters and the age of the oldest message (Redis). --broker is optional: without
    it there are no queue gauges. The store must answer at start (exit 3 if not); later
    outages show as dramatiq_reliable_exporter_source_up{source="store"} 0.
    """
    from ..exporter import registry, serve

    store = state.store()
    store.ping()
    broker: Any = None
    if state.broker_url:
        from ..brokers import broker_from_url, check_broker_url, ping_broker

        options = {"namespace": namespace} if namespace and check_broker_url(state.broker_url) == "redis" else {}
        broker = state._broker = broker_from_url(state.broker_url, **options)  # closed with the state
        ping_broker(broker)
    reg = registry(store, broker, queues=queues, multiproc_dir=multiproc_dir)
    if once:
        from prometheus_client import generate_latest

        click.echo(generate_latest(reg).decode(), nl=False)
        return 0
    server, _thread = serve(reg, host=host, port=port)
    click.echo(f"Serving metrics on http://{host}:{server.server_port}/metrics", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0
