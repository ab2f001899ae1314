"""What the activity page draws: jobs done, failed and dead-lettered, and queue waits, over time.

Read from the store's per-minute counters (:meth:`Store.stats_minutes`, written with each
job's final write and kept 25 hours), for the last hour (one point a minute) or the last day
(one point per 10 minutes), for one actor or all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from markupsafe import Markup

from .._clock import format_duration
from ..store.base import Store
from .charts import Series, line_chart

MINUTE_MS = 60_000


@dataclass(frozen=True)
class Range:
    """A span the page offers: its length and the minutes each point sums."""

    name: str
    title: str
    minutes: int
    per: int
    tick_every_ms: int

    @property
    def unit(self) -> str:
        return "per minute" if self.per == 1 else f"per {self.per} minutes"


RANGES = {
    "hour": Range("hour", "last hour", 60, 1, 10 * MINUTE_MS),
    "day": Range("day", "last 24 hours", 1440, 10, 3 * 60 * MINUTE_MS),
}
#: The job counters the store keeps, in the legend's order, with their words.
COUNTERS = (("done", "done"), ("failed", "failed attempts"), ("dead", "dead-lettered"))
#: Waits below this many seconds are not worth a chart of their own.
WAIT_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


@dataclass
class ActorTotals:
    actor: str
    done: int = 0
    failed: int = 0
    dead: int = 0


@dataclass
class Activity:
    """The charts and totals of one range, for one actor (``None``: all of them)."""

    range: Range
    actor: str | None
    start_ms: int
    totals: dict[str, int]
    actors: list[ActorTotals]
    queues: list[str]
    charts: dict[str, Markup] = field(default_factory=dict)


def wait_step(top: float, ticks: int = 4) -> float:
    """A round duration step (seconds) so that ``ticks`` steps cover ``top`` seconds."""
    for step in WAIT_STEPS:
        if step * ticks >= top:
            return step
    return float(WAIT_STEPS[-1])


def wait_label(seconds: float) -> str:
    return "0" if seconds == 0 else format_duration(seconds)


def load(store: Store, range_: Range, actor: str | None, now_ms: int) -> Activity:
    """Read the counters of ``range_`` up to ``now_ms`` and draw them."""
    last = now_ms // MINUTE_MS
    # Whole points only: the last one ends with the current minute.
    first = (last // range_.per + 1) * range_.per - range_.minutes
    minutes = store.stats_minutes(first, last)
    slots = range_.minutes // range_.per
    counts = {name: [0.0] * slots for name, _ in COUNTERS}
    waits: dict[str, list[float | None]] = {}
    by_actor: dict[str, ActorTotals] = {}
    for minute, fields in minutes.items():
        slot = (minute - first) // range_.per
        if not 0 <= slot < slots:
            continue
        for name, value in fields.items():
            kind, _, rest = name.partition("\t")
            if kind == "a":
                who, _, counter = rest.rpartition("\t")
                if counter not in counts:
                    continue
                totals = by_actor.setdefault(who, ActorTotals(who))
                setattr(totals, counter, getattr(totals, counter) + value)
                if actor is None or who == actor:
                    counts[counter][slot] += value
            elif kind == "w":
                line = waits.setdefault(rest, [None] * slots)
                seconds = value / 1000
                line[slot] = max(line[slot] or 0, seconds)
    start_ms = first * MINUTE_MS
    step_ms = range_.per * MINUTE_MS
    activity = Activity(
        range=range_,
        actor=actor,
        start_ms=start_ms,
        totals={name: int(sum(values)) for name, values in counts.items()},
        actors=sorted(by_actor.values(), key=lambda t: (-t.dead, -t.failed, -t.done, t.actor)),
        queues=sorted(waits),
    )
    words = dict(COUNTERS)
    activity.charts["done"] = line_chart(
        f"jobs done {range_.unit}, {range_.title}",
        start_ms,
        step_ms,
        [Series(words["done"], "c-done", counts["done"])],
        tick_every_ms=range_.tick_every_ms,
    )
    activity.charts["failures"] = line_chart(
        f"failed attempts and dead-lettered jobs {range_.unit}, {range_.title}",
        start_ms,
        step_ms,
        [Series(words[name], f"c-{name}", counts[name]) for name in ("failed", "dead")],
        tick_every_ms=range_.tick_every_ms,
    )
    activity.charts["waits"] = line_chart(
        f"longest wait in the queue {range_.unit}, {range_.title}",
        start_ms,
        step_ms,
        [Series(queue, f"c-q{i % 6}", waits[queue]) for i, queue in enumerate(activity.queues)],
        tick_every_ms=range_.tick_every_ms,
        y_label=wait_label,
        y_step=wait_step,
    )
    return activity
