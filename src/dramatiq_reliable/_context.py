"""What CLI commands share: the URLs given, opened lazily, and the error → exit code mapping."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from .errors import (
    BrokerUnavailable,
    ConfigurationError,
    DramatiqReliableError,
    NotFound,
    StoreUnavailable,
)

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STORE_URL = "redis://127.0.0.1:6379/1"


@dataclass
class CliState:
    """The global options of one CLI invocation, and what was opened from them."""

    store_url: str | None = None
    broker_url: str | None = None
    _store: Any = field(default=None, repr=False)
    _broker: Any = field(default=None, repr=False)

    def store(self) -> Any:
        """The store (``--store``), opened once. Raises ConfigurationError for a bad URL."""
        if self._store is None:
            from .store import open_store

            self._store = open_store(self.store_url or DEFAULT_STORE_URL)
        return self._store

    def broker(self, *, ping: bool = True) -> Any:
        """The broker (``--broker``), built once, and pinged unless ``ping`` is false (a command
        that reports per id what an unreachable broker prevented).

        Raises:
          ConfigurationError: no broker URL, or a malformed one.
          BrokerUnavailable: it does not answer (the message names its URL, password hidden).
        """
        if self._broker is None:
            if not self.broker_url:
                raise ConfigurationError("this command needs --broker URL (or DRAMATIQ_RELIABLE_BROKER)")
            from .brokers import broker_from_url, ping_broker

            self._broker = broker_from_url(self.broker_url)
            if ping:
                ping_broker(self._broker)
        return self._broker

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._broker is not None:
            try:
                self._broker.close()
            except Exception:  # pragma: no cover - closing a broker that never connected
                pass


def run_command(fn: F) -> F:
    """Run a command body, mapping the library's errors to one stderr line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        ctx = click.get_current_context()
        state: CliState = ctx.find_object(CliState) or CliState()
        try:
            return int(fn(*args, **kwargs) or 0)
        except ConfigurationError as exc:
            click.echo(f"error: {exc}", err=True)
            return 2
        except NotFound as exc:
            click.echo(f"error: {exc}", err=True)
            return 1
        except (StoreUnavailable, BrokerUnavailable) as exc:
            click.echo(f"error: {exc}", err=True)
            return 3
        except DramatiqReliableError as exc:
            click.echo(f"error: {exc}", err=True)
            return 1
        finally:
            state.close()

    return wrapper  # type: ignore[return-value]


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))
