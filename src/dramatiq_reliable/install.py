"""``install``: add the bundle's middlewares to a broker, in the one correct order."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import Retries

from .errors import ConfigurationError
from .middleware.alerts import Alerts
from .middleware.base import ReliableMiddleware
from .middleware.dead_letters import DeadLetters
from .middleware.idempotency import Idempotency
from .middleware.job_state import JobState
from .middleware.watchdog import Watchdog
from .store.base import Store

#: The bundle, in the order it sits in the broker's list (all before Retries). Idempotency comes
#: first: it asks the store whether a delivery may run before the others stage anything.
ORDER: list[type[ReliableMiddleware]] = [Idempotency, JobState, DeadLetters, Watchdog, Alerts]


#: install() keywords for options whose name another middleware of the bundle owns first:
#: keyword -> (middleware, its constructor keyword).
ALIASES: dict[str, tuple[type[ReliableMiddleware], str]] = {
    # -- dead letters ---
    "dead_letter_retention": (DeadLetters, "retention"),
}


def _options_of(cls: type[ReliableMiddleware]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY}


def install(
    broker: dramatiq.Broker,
    store: Store,
    **options: Any,
) -> list[ReliableMiddleware]:
    """Add every middleware of the bundle to ``broker`` and return them, in order.

    Each keyword goes to the middleware whose constructor takes it (``retention`` to JobState,
    ``ttl`` and ``lease`` to Idempotency, ``notifiers`` and ``window`` to Alerts, …);
    ``dead_letter_retention`` is DeadLetters' ``retention``. Call it before the modules that
    declare actors are imported, as for any middleware that adds actor options.

    Example::

        broker = RedisBroker(url="redis://127.0.0.1:6379/0")
        store = dr.RedisStore("redis://127.0.0.1:6379/1")
        dr.install(broker, store, retention=3 * 86400)
        dramatiq.set_broker(broker)

    Raises:
      ConfigurationError: an unknown or invalid option, or a middleware of the bundle already on
        ``broker``; then none is added.
    """
    if not isinstance(store, Store):
        raise ConfigurationError(f"install() needs a store (dr.RedisStore or dr.MemoryStore), not {store!r}")
    owners: dict[str, type[ReliableMiddleware]] = {}
    for cls in ORDER:
        for name in _options_of(cls):
            owners.setdefault(name, cls)
    unknown = sorted(set(options) - set(owners) - set(ALIASES))
    if unknown:
        raise ConfigurationError(
            f"install(): unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted({*owners, *ALIASES}))}"
        )
    for cls in ORDER:
        if any(isinstance(m, cls) for m in broker.middleware):
            raise ConfigurationError(f"{cls.__name__} is already on this broker; add each middleware once")
    built = []
    for cls in ORDER:  # every one built (its options checked) before any is added: a bad option adds none
        kwargs = {k: v for k, v in options.items() if k in owners and owners[k] is cls}
        kwargs.update({ALIASES[k][1]: v for k, v in options.items() if k in ALIASES and ALIASES[k][0] is cls})
        built.append(_build(cls, store, kwargs))
    for middleware in built:
        add(broker, middleware)
    return built


def _build(cls: Callable[..., ReliableMiddleware], store: Store, kwargs: dict[str, Any]) -> ReliableMiddleware:
    return cls(store, **kwargs)


def add(broker: dramatiq.Broker, middleware: ReliableMiddleware) -> None:
    """Add one middleware of the bundle where ``install`` would put it: before Retries.

    Use it to install a part of the bundle only (``broker.add_middleware`` works too; the bundle
    does not depend on its place relative to Retries).

    Raises:
      ConfigurationError: a middleware of the same class is already on ``broker``.
    """
    if any(isinstance(m, type(middleware)) for m in broker.middleware):
        raise ConfigurationError(f"{type(middleware).__name__} is already on this broker; add each middleware once")
    if any(isinstance(m, Retries) for m in broker.middleware):
        broker.add_middleware(middleware, before=Retries)
    else:
        broker.add_middleware(middleware)
