"""``dramatiq-reliable web``: the support page, served on loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._context import CliState, run_command
from ..errors import ConfigurationError
from ._app import load_app, path_option

if TYPE_CHECKING:
    from ..web.auth import Auth

#: Shortest secret accepted from --secret-file (bytes).
MIN_SECRET = 32
#: Levels --log-level accepts.
LOG_LEVELS = ("debug", "info", "warning", "error")
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
@click.option(
    "--basic-auth",
    "basic_auth",
    multiple=True,
    envvar="DRAMATIQ_RELIABLE_WEB_BASIC_AUTH",
    metavar="USER:PASSWORD",
    help="Ask readers for this user and password (repeatable; HTTP basic auth: put TLS in front). "
    "[env DRAMATIQ_RELIABLE_WEB_BASIC_AUTH, space-separated]",
)
@click.option(
    "--auth-header",
    envvar="DRAMATIQ_RELIABLE_WEB_AUTH_HEADER",
    metavar="NAME",
    help="Read the user name from this header (e.g. X-Forwarded-User), set by a reverse proxy after "
    "its login; believed only from --trusted-proxy addresses. [env DRAMATIQ_RELIABLE_WEB_AUTH_HEADER]",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    envvar="DRAMATIQ_RELIABLE_WEB_TRUSTED_PROXIES",
    metavar="ADDRESS",
    help="An address or network of the proxy (repeatable), e.g. 10.0.0.0/8. "
    "[env DRAMATIQ_RELIABLE_WEB_TRUSTED_PROXIES, space-separated]",
)
@click.option(
    "--secret-file",
    envvar="DRAMATIQ_RELIABLE_WEB_SECRET_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the key forms are signed with (32+ bytes), the same for every replica, so "
    "each accepts the others' forms. Default: a key drawn at start. [env DRAMATIQ_RELIABLE_WEB_SECRET_FILE]",
)
@click.option(
    "--refresh",
    "refresh_s",
    type=click.IntRange(0, 3600),
    default=5,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between the refreshes of a page left open; 0: never.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default="info",
    show_default=True,
    envvar="DRAMATIQ_RELIABLE_WEB_LOG_LEVEL",
    help="What the server logs to stderr: actions at info, refusals at warning.",
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
    basic_auth: tuple[str, ...],
    auth_header: str | None,
    trusted_proxies: tuple[str, ...],
    secret_file: Path | None,
    refresh_s: int,
    log_level: str,
    app: str | None,
    paths: tuple[str, ...],
) -> int:
    """Serve the support page: find a job by id, key, actor or status; see why; replay.

    \b
    Read-only unless --allow-actions and --token are both given. Binds 127.0.0.1 by default;
    with actions on, a non-loopback --host is refused unless --allow-remote-actions. Anyone who
    reaches the port reads the page unless --basic-auth or --auth-header is given.
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
    auth = _auth(basic_auth, auth_header, trusted_proxies)
    secret = _secret(secret_file) if secret_file is not None else None
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
            secret=secret,
            auth=auth,
            refresh_s=refresh_s,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    mode = "replay and purge allowed with the token" if allow_actions else "read-only"
    readers = f"readers need {auth.kind}" if auth is not None else "anyone who reaches it reads it"
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Serving the support page on http://{shown}:{port}/ ({mode}; {readers}); Ctrl-C stops it", err=True)
    _log_to_stderr(log_level)
    # proxy_headers off: the client address is the peer's, which --trusted-proxy is checked against.
    uvicorn.run(site, host=host, port=port, log_level=log_level, access_log=False, proxy_headers=False)
    return 0


def _auth(basic_auth: tuple[str, ...], auth_header: str | None, trusted_proxies: tuple[str, ...]) -> Auth | None:
    """The readers' :class:`~dramatiq_reliable.web.auth.Auth` from the options, or ``None``."""
    from ..web.auth import Auth, parse_networks, parse_users

    if not basic_auth and not auth_header:
        if trusted_proxies:
            raise ConfigurationError("--trusted-proxy is only used with --auth-header")
        return None
    if basic_auth and auth_header:
        raise ConfigurationError("give --basic-auth or --auth-header, not both")
    if auth_header and not trusted_proxies:
        raise ConfigurationError("--auth-header needs --trusted-proxy ADDRESS: the header is believed only from it")
    try:
        return Auth(users=parse_users(basic_auth), header=auth_header, trusted=parse_networks(trusted_proxies))
    except ValueError as exc:
        raise ConfigurationError(f"{'--basic-auth' if basic_auth else '--trusted-proxy'}: {exc}") from None


def _secret(path: Path) -> bytes:
    """The signing key in ``path`` (surrounding whitespace dropped)."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigurationError(f"--secret-file {path}: cannot be read ({exc.strerror or exc})") from None
    if len(secret) < MIN_SECRET:
        raise ConfigurationError(
            f"--secret-file {path}: holds {len(secret)} bytes, at least {MIN_SECRET} are needed "
            "(e.g. openssl rand -hex 32 > FILE)"
        )
    return secret


def _log_to_stderr(level: str) -> None:
    """Log the page's actions and refusals to stderr at ``level`` (each line with its time)."""
    logger = logging.getLogger("dramatiq_reliable.web")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
