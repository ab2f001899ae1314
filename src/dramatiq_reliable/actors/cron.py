"""``@dr.cron``: periodic jobs, registered on the broker of the actor they send.

Example::

    @dr.cron("0 2 * * *", timezone="Europe/Berlin")
    @dramatiq.actor(time_limit=15 * 60 * 1000)
    def nightly_report(): ...

The decorator checks the expression, the time zone and the arguments when the module is
imported, and adds a :class:`Schedule` to the :class:`CronRegistry` of the actor's broker
(:func:`registry_of`). Nothing runs until a scheduler does: ``dramatiq-reliable scheduler
APP_MODULE`` (see :class:`~dramatiq_reliable.scheduler.Scheduler`) imports the app and runs the
schedules of its broker.
"""

from __future__ import annotations

import inspect
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dramatiq

from ..errors import ArgumentsError, ConfigurationError

A = TypeVar("A", bound="dramatiq.Actor[Any, Any]")

#: The namespace of the job ids of ticks: ``uuid5(CRON_NAMESPACE, "<schedule>@<fire time ms>")``.
CRON_NAMESPACE = uuid.UUID("6f1c0a52-3c8e-5d6b-9a57-2b1e8f0c4d11")
#: Message options carried by a tick's message: the schedule's name and the fire time (ms).
SCHEDULE_OPTION = "dr_cron"
FIRE_OPTION = "dr_cron_fire"  # checked as a possible redelivery: middleware/_redelivery.py
#: The longest schedule name accepted (characters).
MAX_NAME = 200

_ATTR = "_dramatiq_reliable_cron"
_attach_lock = threading.Lock()


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass(frozen=True)
class Schedule:
    """One periodic job: send ``actor_name`` with ``args`` and ``kwargs`` at every tick.

    Times are integer milliseconds since the epoch (UTC); a tick's fire time is the same on
    every host, which is what lets several schedulers agree on it.
    """

    #: Unique per broker; the actor's name unless ``name=`` was given.
    name: str
    actor_name: str
    #: The crontab expression as written.
    expression: str
    #: The IANA name of the time zone the expression is read in.
    timezone: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: The APScheduler ``CronTrigger`` that computes the fire times.
    trigger: Any = field(default=None, repr=False, compare=False)

    def next_fire_after(self, ms: int) -> int | None:
        """The first fire time strictly after ``ms``, or ``None`` if there is none."""
        at = _utc(ms)
        fire = self.trigger.get_next_fire_time(at, at)
        return round(fire.timestamp() * 1000) if fire is not None else None

    def fires_between(self, after_ms: int, until_ms: int, *, limit: int = 100_000) -> list[int]:
        """The fire times in ``(after_ms, until_ms]``, oldest first, at most ``limit`` of them."""
        out: list[int] = []
        fire = self.next_fire_after(after_ms)
        while fire is not None and fire <= until_ms and len(out) < limit:
            out.append(fire)
            fire = self.next_fire_after(fire)
        return out

    def job_id(self, fire_ms: int) -> str:
        """The id of the job a tick enqueues: the same on every host, derived from name and fire time."""
        return str(uuid.uuid5(CRON_NAMESPACE, f"{self.name}@{int(fire_ms)}"))

    def local_time(self, fire_ms: int) -> datetime:
        """A fire time in the schedule's time zone."""
        return _utc(fire_ms).astimezone(self.trigger.timezone)


class CronRegistry:
    """The schedules declared with ``@dr.cron`` for the actors of one broker.

    Get a broker's with :func:`registry_of`; iterate it for its :class:`Schedule` s, by name.
    """

    def __init__(self) -> None:
        self._schedules: dict[str, Schedule] = {}
        self._lock = threading.Lock()

    def add(self, schedule: Schedule) -> None:
        """Register ``schedule``.

        Raises:
          ConfigurationError: a schedule of that name is already registered.
        """
        with self._lock:
            other = self._schedules.get(schedule.name)
            if other is not None:
                raise ConfigurationError(
                    f"cron schedule {schedule.name!r} of actor {schedule.actor_name!r}: a schedule of that name "
                    f"already exists (actor {other.actor_name!r}); pass name=... to @dr.cron"
                )
            self._schedules[schedule.name] = schedule

    def get(self, name: str) -> Schedule | None:
        return self._schedules.get(name)

    def __iter__(self) -> Iterator[Schedule]:
        with self._lock:
            return iter(sorted(self._schedules.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._schedules)

    def __repr__(self) -> str:
        return f"<CronRegistry {sorted(self._schedules)}>"


def registry_of(broker: dramatiq.Broker) -> CronRegistry:
    """The :class:`CronRegistry` of ``broker`` (created, empty, on first use)."""
    registry: CronRegistry | None = broker.__dict__.get(_ATTR)
    if registry is None:
        with _attach_lock:
            registry = broker.__dict__.setdefault(_ATTR, CronRegistry())
    return registry


def zone_of(value: str | tzinfo, where: str) -> tzinfo:
    """A time zone from an IANA name or a ``tzinfo``.

    Raises:
      ConfigurationError: an unknown name.
    """
    if isinstance(value, tzinfo):
        return value
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: timezone must be an IANA name such as 'Europe/Berlin', not {value!r}")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"{where}: unknown timezone {value!r} (use an IANA name such as 'Europe/Berlin' or 'UTC')"
        ) from None


def cron(
    expression: str,
    *,
    timezone: str | tzinfo = "UTC",
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Callable[[A], A]:
    """Send the decorated actor at every tick of a crontab expression.

    Stack it on top of ``@dramatiq.actor``; it returns the actor unchanged, and may be stacked
    more than once (with distinct ``name`` s) for several schedules of one actor.

    Parameters:
      expression(str): five fields (minute hour day-of-month month day-of-week, as crontab:
        ``0`` and ``7`` are Sunday), or six with a leading seconds field (``*/10 * * * * *``),
        or ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``.
      timezone(str | tzinfo): the zone the expression is read in. Defaults to ``"UTC"``; see
        :mod:`dramatiq_reliable.actors._crontab` for what happens at daylight-saving changes.
      args(tuple): positional arguments of every message. Must be JSON-serializable.
      kwargs(dict): keyword arguments of every message. Must be JSON-serializable.
      name(str): the schedule's name, unique per broker. Defaults to the actor's name.

    Raises:
      ConfigurationError: at import, naming the actor: a malformed expression, an unknown time
        zone, arguments that do not fit the actor, a duplicate name, APScheduler missing.
    """

    def register(actor: A) -> A:
        if not isinstance(actor, dramatiq.Actor):
            raise ConfigurationError(
                f"@dr.cron({expression!r}) must be stacked on a Dramatiq actor: put it above @dramatiq.actor "
                f"(got {actor!r})"
            )
        label = actor.actor_name if name is None else name
        where = f"cron schedule {label!r} of actor {actor.actor_name!r}"
        if not isinstance(label, str) or not label or len(label) > MAX_NAME or any(c.isspace() for c in label):
            raise ConfigurationError(f"{where}: name must be a non-empty string without spaces, at most {MAX_NAME}")
        zone = zone_of(timezone, where)
        try:
            from . import _crontab
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        try:
            trigger = _crontab.trigger(expression, zone)
        except ValueError as exc:
            raise ConfigurationError(f"{where}: bad cron expression {expression!r}: {exc}") from None
        if trigger.get_next_fire_time(None, datetime.now(zone)) is None:
            raise ConfigurationError(f"{where}: cron expression {expression!r} never fires")
        call_args, call_kwargs = _check_arguments(actor, args, kwargs, where)
        schedule = Schedule(
            name=label,
            actor_name=actor.actor_name,
            expression=expression,
            timezone=str(getattr(zone, "key", zone)),
            args=call_args,
            kwargs=call_kwargs,
            trigger=trigger,
        )
        registry_of(actor.broker).add(schedule)
        return actor

    return register


def _check_arguments(
    actor: dramatiq.Actor[Any, Any], args: Any, kwargs: Any, where: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(args, (str, bytes)) or not isinstance(args, (tuple, list)):
        raise ConfigurationError(f"{where}: args must be a tuple, not {args!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"{where}: kwargs must be a dict, not {kwargs!r}")
    call_args, call_kwargs = tuple(args), dict(kwargs or {})
    try:
        json.dumps([call_args, call_kwargs])
    except (TypeError, ValueError) as exc:
        raise ArgumentsError(f"{where}: arguments are not JSON-serializable: {exc}") from None
    try:
        inspect.signature(actor.fn).bind(*call_args, **call_kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"{where}: args/kwargs do not fit the actor: {exc}") from None
    except ValueError:  # no signature (a builtin); Dramatiq will tell at run time
        pass
    return call_args, call_kwargs
