"""Line charts as inline SVG, drawn on the server: axes, ticks, grid, one line per series.

No script and no charting library: the page's CSP allows neither, and an SVG the server
writes is readable without either. Colours come from the stylesheet (``.chart .c-<name>``);
every text from job data is escaped. Each time slot carries a ``<title>``, so hovering it
shows its values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape

from markupsafe import Markup

#: Size of the drawing (the SVG scales to its container's width).
WIDTH = 880
HEIGHT = 230
#: Room for the y labels (left), the x labels (bottom) and the top line's label.
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 12, 34
#: Horizontal grid lines drawn at most.
Y_TICKS = 4


@dataclass
class Series:
    """One line: its name in the legend, its colour class, one value per slot (``None``: no data)."""

    name: str
    css: str
    values: Sequence[float | None]

    @property
    def total(self) -> float:
        return sum(v for v in self.values if v is not None)

    @property
    def peak(self) -> float:
        return max((v for v in self.values if v is not None), default=0)


def nice_step(top: float, ticks: int = Y_TICKS) -> float:
    """A round step (1, 2 or 5 times a power of ten) so that ``ticks`` steps cover ``top``."""
    if top <= 0:
        return 1
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return float(factor * power)
    return float(10 * power)


def count_step(top: float, ticks: int = Y_TICKS) -> float:
    """:func:`nice_step` for counts: never less than 1 (no "0.5 jobs" on the axis)."""
    return max(1.0, nice_step(top, ticks))


def count_label(value: float) -> str:
    """``1200`` → ``1.2k``; small values as they are."""
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k".replace(".0k", "k")
    return f"{value:g}"


def _time_label(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%H:%M")


def line_chart(
    label: str,
    start_ms: int,
    step_ms: int,
    series: Sequence[Series],
    *,
    tick_every_ms: int,
    y_label: Callable[[float], str] = count_label,
    y_step: Callable[[float], float] = count_step,
) -> Markup:
    """An SVG line chart of ``series`` over slots of ``step_ms`` from ``start_ms``.

    Parameters:
      label(str): what the chart shows, for screen readers (``aria-label``).
      start_ms(int): the first slot's start (ms since the epoch, UTC).
      step_ms(int): each slot's length in milliseconds.
      series(list[Series]): the lines, all of the same length.
      tick_every_ms(int): a labelled time tick at each multiple of this (UTC).
      y_label(callable): a value as the y axis writes it.
      y_step(callable): the step between horizontal grid lines for a highest value.
    """
    slots = max((len(s.values) for s in series), default=0)
    peak = max((s.peak for s in series), default=0)
    step = y_step(peak)
    top = step * max(1, math.ceil(peak / step)) if peak > 0 else step * Y_TICKS
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: float) -> float:
        return LEFT + plot_w * (i + 0.5) / max(slots, 1)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    # Horizontal grid and the y axis' labels.
    value = 0.0
    while value <= top + step / 2:
        yy = y(value)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(
            f'<text class="tick" x="{LEFT - 8}" y="{yy + 4:.1f}" text-anchor="end">{escape(y_label(value))}</text>'
        )
        value += step
    # Time ticks on round times, and the axis line.
    base = TOP + plot_h
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}"/>')
    end_ms = start_ms + slots * step_ms
    tick = -(-start_ms // tick_every_ms) * tick_every_ms
    while tick <= end_ms:
        xx = LEFT + plot_w * (tick - start_ms) / max(end_ms - start_ms, 1)
        out.append(f'<line class="axis" x1="{xx:.1f}" x2="{xx:.1f}" y1="{base}" y2="{base + 5}"/>')
        out.append(f'<text class="tick" x="{xx:.1f}" y="{base + 19}" text-anchor="middle">{_time_label(tick)}</text>')
        tick += tick_every_ms
    out.append(f'<text class="tick unit" x="{WIDTH - RIGHT}" y="{HEIGHT - 1}" text-anchor="end">UTC</text>')
    # The lines (a gap where a slot has no value), the first one with its area filled.
    for n, s in enumerate(series):
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((x(i), y(v)))
        for run in runs:
            if not run:
                continue
            points = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
            if n == 0:
                area = f"{run[0][0]:.1f},{base} {points} {run[-1][0]:.1f},{base}"
                out.append(f'<polygon class="area {s.css}" points="{area}"/>')
            if len(run) == 1:
                px, py = run[0]
                out.append(f'<circle class="dot {s.css}" cx="{px:.1f}" cy="{py:.1f}" r="3"/>')
            else:
                out.append(f'<polyline class="line {s.css}" points="{points}"/>')
    # One hover target per slot, with its values.
    width = plot_w / max(slots, 1)
    for i in range(slots):
        at = start_ms + i * step_ms
        parts = [f"{s.name} {y_label(v) if v is not None else '-'}" for s in series for v in [s.values[i]]]
        tip = f"{_time_label(at)} to {_time_label(at + step_ms)} UTC: " + ", ".join(parts)
        out.append(
            f'<rect class="slot" x="{LEFT + i * width:.1f}" y="{TOP}" width="{width:.1f}" height="{plot_h}">'
            f"<title>{escape(tip)}</title></rect>"
        )
    out.append("</svg>")
    return Markup("".join(out))
