"""Import a user's app module as ``dramatiq`` does, and find its broker and store."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import dramatiq
import dramatiq.broker

from ..errors import ConfigurationError
from ..store.base import Store

F = TypeVar("F", bound=Callable[..., Any])


def load_app(spec: str, paths: Sequence[str] = (".",)) -> dramatiq.Broker:
    """Import ``module`` or ``module:attribute`` (the directories of ``paths`` first) and return its broker.

    As with ``dramatiq``: ``module`` uses the broker the module set (``dramatiq.set_broker``);
    ``module:broker`` names a broker, or a function that sets one.

    Raises:
      ConfigurationError: the module does not import (its error in one line), or sets no broker.
    """
    for path in reversed(paths):
        folder = os.path.abspath(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise ConfigurationError(f"APP_MODULE must be a module path such as app.tasks, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigurationError(f"cannot import app module {module_name!r}: {_one_line(exc)}") from None
    if attribute:
        try:
            value: Any = functools.reduce(getattr, attribute.split("."), module)
        except AttributeError:
            raise ConfigurationError(f"app module {module_name!r} has no attribute {attribute!r}") from None
        if isinstance(value, dramatiq.Broker):
            return value
        if not callable(value):
            raise ConfigurationError(f"{spec!r} is neither a broker nor a function that sets one")
        try:
            value()
        except Exception as exc:
            raise ConfigurationError(f"{spec}() failed: {_one_line(exc)}") from None
    broker = dramatiq.broker.global_broker
    if broker is None:
        raise ConfigurationError(
            f"app module {module_name!r} sets no broker: call dramatiq.set_broker(broker) in it, "
            f"or name it: {module_name}:broker"
        )
    return broker


def store_of(broker: dramatiq.Broker) -> Store | None:
    """The store of the bundle's middlewares on ``broker`` (installed with ``dr.install``), if any."""
    from ..middleware.base import ReliableMiddleware

    for middleware in broker.middleware:
        if isinstance(middleware, ReliableMiddleware):
            return middleware.store
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def path_option() -> Callable[[F], F]:
    return click.option(
        "-P",
        "--path",
        "paths",
        multiple=True,
        default=(".",),
        show_default=True,
        metavar="DIR",
        help="Directory to import APP_MODULE from (repeatable), as dramatiq's --path.",
    )
