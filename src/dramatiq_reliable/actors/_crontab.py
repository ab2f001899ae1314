"""Crontab expressions to APScheduler 3.x ``CronTrigger`` s, with crontab's own semantics.

APScheduler's ``CronTrigger.from_crontab`` differs from crontab in two ways that would
silently move a job: it counts weekdays from Monday (``0`` is Monday, not Sunday), and it runs
a job only on days that match *both* the day-of-month and the day-of-week fields, where
crontab runs on days that match *either*. :func:`trigger` translates weekdays to names, and
refuses an expression that restricts both day fields rather than guess.

Daylight saving time (a non-UTC ``timezone``):

* spring forward: a local time that does not exist (02:30 in Europe/Berlin on the last Sunday
  of March) fires once, at the instant it would have had in winter time (03:30 summer time);
  schedules for every hour or minute go on at their usual interval in real time.
* fall back: a schedule that names its minute and hour (``30 2 * * *``) fires once per local
  wall-clock time: the second 02:30 is skipped. A schedule whose minute or hour field starts
  with ``*`` (``*/15 * * * *``, ``0 * * * *``) follows real time and fires in both passes of
  the repeated hour, as Vixie cron does.

This module needs APScheduler; it is imported only when ``dr.cron`` is used.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from ..errors import ConfigurationError

try:
    from apscheduler.triggers.cron import CronTrigger
except ImportError as exc:
    raise ConfigurationError(
        "dr.cron needs APScheduler 3.x: install dramatiq-reliable[cron] (pip install 'dramatiq-reliable[cron]')"
    ) from exc

#: Crontab's shorthands.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_AFTER = timedelta(microseconds=1)

#: Crontab's weekday numbers (0 and 7 are Sunday) as the names APScheduler understands.
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class WallClockCronTrigger(CronTrigger):  # type: ignore[misc]
    """A ``CronTrigger`` that always moves forward, and may skip the repeat of a local time.

    APScheduler 3.11's ``CronTrigger``, given the first 02:30 of a fall-back night
    (Europe/Berlin, ``30 2 * * *``) as a UTC datetime, answers that same instant again, forever
    (apscheduler#1021 is the same family); this one searches from just after the previous fire
    time with no previous fire time given, which it gets right. With ``once_per_wall_time`` the
    second occurrence of a repeated local time (``fold=1``) is skipped.
    """

    __slots__ = ("once_per_wall_time",)

    def __init__(self, *, once_per_wall_time: bool, **fields: Any) -> None:
        super().__init__(**fields)
        self.once_per_wall_time = once_per_wall_time

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        start = now if previous_fire_time is None else previous_fire_time.astimezone(timezone.utc) + _AFTER
        fire: datetime | None = super().get_next_fire_time(None, start)
        while fire is not None and self.once_per_wall_time and repeated_local_time(fire):
            fire = super().get_next_fire_time(None, fire.astimezone(timezone.utc) + _AFTER)
        return fire


def repeated_local_time(dt: datetime) -> bool:
    """True for the second occurrence of an ambiguous local time (the hour repeated at fall-back)."""
    return dt.fold == 1 and dt.replace(fold=0).utcoffset() != dt.utcoffset()


def fields_of(expression: str) -> dict[str, str]:
    """The ``CronTrigger`` fields of a crontab expression.

    Five fields (minute hour day-of-month month day-of-week), or six with a leading seconds
    field; ``@daily`` and the other shorthands.

    Raises:
      ValueError: the expression is malformed (the message says how).
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("empty cron expression")
    text = MACROS.get(expression.strip().lower(), expression)
    parts = text.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    elif len(parts) != 6:
        raise ValueError(
            f"expected 5 fields (minute hour day month weekday), or 6 with a leading seconds field; got {len(parts)}"
        )
    second, minute, hour, day, month, weekday = parts
    if not day.startswith("*") and not weekday.startswith("*"):
        raise ValueError(
            "both day-of-month and day-of-week are restricted: crontab runs on days matching either, "
            "APScheduler only on days matching both; use two schedules (name=...) instead"
        )
    return {
        "second": second,
        "minute": minute,
        "hour": hour,
        "day": day,
        "month": month,
        "day_of_week": weekdays(weekday),
    }


def weekdays(field: str) -> str:
    """A crontab day-of-week field (``0``/``7`` = Sunday, names, ranges, steps) as APScheduler names.

    Raises:
      ValueError: a malformed field.
    """
    if field == "*":
        return "*"
    days: set[int] = set()
    for token in field.split(","):
        base, slash, step_text = token.partition("/")
        step = _number(step_text, "step") if slash else 1
        if step < 1:
            raise ValueError(f"bad step in day-of-week {field!r}")
        if base == "*":
            low, high = 0, 6
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _weekday(first, field), _weekday(last, field)
            if low > high:
                raise ValueError(f"backwards range in day-of-week {field!r}")
        else:
            low = _weekday(base, field)
            high = 6 if slash else low
        days.update(d % 7 for d in range(low, high + 1, step))
    return ",".join(WEEKDAYS[d] for d in sorted(days))


def _weekday(text: str, field: str) -> int:
    name = text.strip().lower()
    if name in WEEKDAYS:
        return WEEKDAYS.index(name)
    if name.isdigit() and 0 <= int(name) <= 7:
        return int(name)
    raise ValueError(f"bad day-of-week {text!r} in {field!r} (use 0-7 or sun-sat)")


def _number(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad {what} {text!r}")
    return int(text)


def trigger(expression: str, zone: tzinfo) -> WallClockCronTrigger:
    """The trigger of ``expression`` in time zone ``zone``.

    Raises:
      ValueError: the expression is malformed.
    """
    fields = fields_of(expression)
    fixed_time = not fields["minute"].startswith("*") and not fields["hour"].startswith("*")
    return WallClockCronTrigger(once_per_wall_time=fixed_time, timezone=zone, **fields)
