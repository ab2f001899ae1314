"""What runs on top of bare Dramatiq in each variant of the benchmark.

A variant adds middlewares to a broker the way a user would: one middleware alone with
``broker.add_middleware(dr.X(store))``, the whole bundle with ``dr.install(broker, store)``.
A variant whose middleware is not in the installed ``dramatiq_reliable`` yet is skipped
(:func:`missing` says why), so the harness runs against whatever the package holds today.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq

import dramatiq_reliable as dr


def _notifiers() -> dict[str, Any]:
    """A LogNotifier for Alerts, when the package has one (no-op jobs never trigger it)."""
    log_notifier = getattr(dr, "LogNotifier", None)
    return {"notifiers": [log_notifier()]} if log_notifier is not None else {}


def _alone(*names: str) -> Callable[[dramatiq.Broker, dr.Store], list[Any]]:
    def apply(broker: dramatiq.Broker, store: dr.Store) -> list[Any]:
        added = []
        for name in names:
            cls = getattr(dr, name)
            middleware = cls(store, **_notifiers()) if name == "Alerts" else cls(store)
            broker.add_middleware(middleware)
            added.append(middleware)
        return added

    return apply


def _bundle(broker: dramatiq.Broker, store: dr.Store) -> list[Any]:
    options = _notifiers() if hasattr(dr, "Alerts") else {}
    return list(dr.install(broker, store, **options))


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    #: Names the variant needs from ``dramatiq_reliable``.
    needs: tuple[str, ...]
    apply: Callable[[dramatiq.Broker, dr.Store], list[Any]]

    @property
    def uses_store(self) -> bool:
        return bool(self.needs)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("bare", "stock Dramatiq, no middleware of ours", (), lambda broker, store: []),
        Variant("jobstate", "JobState alone", ("JobState",), _alone("JobState")),
        Variant("idempotency", "Idempotency alone", ("Idempotency",), _alone("Idempotency")),
        Variant(
            "jobstate+idempotency",
            "JobState and Idempotency, added by hand",
            ("JobState", "Idempotency"),
            _alone("JobState", "Idempotency"),
        ),
        Variant("watchdog", "Watchdog alone", ("Watchdog",), _alone("Watchdog")),
        Variant("deadletters", "DeadLetters alone", ("DeadLetters",), _alone("DeadLetters")),
        Variant("alerts", "Alerts alone (a LogNotifier)", ("Alerts",), _alone("Alerts")),
        Variant("bundle", "dr.install(broker, store): every middleware of the package", ("install",), _bundle),
    ]
}

DEFAULT = list(VARIANTS)


def get(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})") from None


def missing(name: str) -> str | None:
    """Why variant ``name`` cannot run with the installed package, or ``None`` if it can."""
    absent = [n for n in get(name).needs if not hasattr(dr, n)]
    if absent:
        return f"dramatiq_reliable has no {', '.join(absent)} yet"
    return None


def apply(name: str, broker: dramatiq.Broker, store: dr.Store | None) -> list[str]:
    """Add variant ``name``'s middlewares to ``broker``; return their class names, in list order."""
    variant = get(name)
    if not variant.uses_store:
        return []
    assert store is not None
    added = variant.apply(broker, store)
    return [type(m).__name__ for m in added]


def bundle_members() -> list[str]:
    """The middlewares ``dr.install`` adds with this version of the package."""
    from dramatiq_reliable.install import ORDER

    return [cls.__name__ for cls in ORDER]
