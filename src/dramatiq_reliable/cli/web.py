"""``dramatiq-reliable web``: the support page, served on loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from .._context import CliState, run_command
from ..errors import ConfigurationError
from ._app import load_app, path_option

#: Host names served when the page binds a loopback address (against DNS rebinding).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to bind.")
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Offer replay and purge of dead letters; needs --token and --broker. Default: read-only.",
)
@click.option(
    "--token",
    envvar="DRAMATIQ_RELIABLE_WEB_TOKEN",
    metavar="TEXT",
    help="What a person types to confirm an action (12+ characters). [env DRAMATIQ_RELIABLE_WEB_TOKEN]",
)
@click.option(
    "--allow-remote-actions",
    is_flag=True,
    help="Allow --allow-actions on a --host that is not loopback (put TLS in front of it).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A Host header to serve (repeatable), e.g. behind a proxy. Default on loopback: "
    "127.0.0.1, localhost, ::1; elsewhere: any.",
)
@click.option(
    "--search-key",
    "search_keys",
    multiple=True,
    metavar="NAME",
    help="A business key a plain search text is also looked up as (repeatable), e.g. order_id.",
)
@click.option("--app", metavar="MODULE[:BROKER]", help="Import this app for its cron schedules and declared queues.")
@path_option()
@click.pass_obj
@run_command
def web(
    state: CliState,
    host: str,
    port: int,
    allow_actions: bool,
    token: str | None,
    allow_remote_actions: bool,
    allowed_hosts: tuple[str, ...],
    search_keys: tuple[str, ...],
    app: str | None,
    paths: tuple[str, ...],
) -> int:
    """Serve the support page: find a job by id, key, actor or status; see why; replay.

    \b
    Read-only unless --allow-actions and --token are both given. Binds 127.0.0.1 by default;
    with actions on, a non-loopback --host is refused unless --allow-remote-actions.
    Needs the extra: pip install 'dramatiq-reliable[web]'.
    """
    try:
        import uvicorn

        from ..web import create_app
        from ..web.security import MIN_TOKEN
    except ImportError as exc:
        raise ConfigurationError(
            f"the web page needs its extra: pip install 'dramatiq-reliable[web]' (missing: {exc.name})"
        ) from None
    if allow_actions:
        if not token:
            raise ConfigurationError("--allow-actions needs --token (or DRAMATIQ_RELIABLE_WEB_TOKEN)")
        if len(token) < MIN_TOKEN:
            raise ConfigurationError(f"--token must be at least {MIN_TOKEN} characters long")
        if not state.broker_url:
            raise ConfigurationError("--allow-actions needs --broker URL: replay and purge act on the broker")
    loopback = is_loopback(host)
    if allow_actions and not loopback and not allow_remote_actions:
        raise ConfigurationError(
            f"--allow-actions on {host}, which is not loopback, needs --allow-remote-actions "
            "(anyone who reaches the port may try the token: put TLS and a firewall in front)"
        )
    hosts: list[str] | None = [*LOOPBACK_HOSTS, *allowed_hosts] if loopback else (list(allowed_hosts) or None)
    schedules: list[Any] = []
    declared: list[str] = []
    if app is not None:
        from ..actors.cron import registry_of

        app_broker = load_app(app, paths)
        schedules = list(registry_of(app_broker))
        declared = sorted(app_broker.get_declared_queues())
    store = state.store()
    store.ping()
    broker = None
    if state.broker_url:
        from ..brokers import ping_broker

        broker = state.broker()
        ping_broker(broker)
        if hasattr(broker, "state"):  # RabbitMQ: the ping's connection belongs to this thread
            del broker.connection
    try:
        site = create_app(
            store,
            broker,
            token=token if allow_actions else None,
            schedules=schedules,
            declared_queues=declared,
            search_keys=search_keys,
            allowed_hosts=hosts,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    mode = "replay and purge allowed with the token" if allow_actions else "read-only"
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Serving the support page on http://{shown}:{port}/ ({mode}); Ctrl-C stops it", err=True)
    uvicorn.run(site, host=host, port=port, log_level="warning", access_log=False)
    return 0
