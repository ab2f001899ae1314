"""Human views of records for the CLI: what a person needs at a glance."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import click

from .._clock import ago, iso
from .._secrets import mask_urls
from ..records import JobRecord

STATUS_COLORS = {
    "queued": "blue",
    "running": "cyan",
    "retrying": "yellow",
    "done": "green",
    "failed": "red",
    "skipped": "white",
    "stuck": "magenta",
    "abandoned": "red",
}


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters; ending with "…" when something was cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def first_line(text: str, width: int) -> str:
    """The first line of ``text`` in at most ``width`` characters; "…" if more was left out."""
    lines = text.splitlines() or [""]
    line = lines[0]
    if len(lines) > 1 and len(line) < width:
        line += " …"
    return cut(line, width)


def _ms(dt: datetime | None) -> float | None:
    return dt.timestamp() * 1000 if dt else None


def when(dt: datetime | None) -> str:
    if dt is None:
        return "-"
    return f"{iso(dt)} ({ago(_ms(dt))})"


def status_word(status: str) -> str:
    return click.style(status, fg=STATUS_COLORS.get(status), bold=status in ("failed", "stuck", "abandoned"))


def job_detail(r: JobRecord) -> str:
    """The view of ``jobs show``: where it is, since when, why."""
    lines = [
        f"{click.style('Job', bold=True)} {r.id}   {r.actor}   {status_word(r.status.value)} since {ago(_ms(r.since))}",
        "",
    ]
    attempts = f"{r.attempts}" + (f" (max_retries {r.max_retries})" if r.max_retries is not None else "")
    rows = [
        ("queue", r.queue),
        ("attempts", attempts),
        ("worker", r.worker or "-"),
        ("enqueued", when(r.enqueued_at)),
    ]
    if r.due_at:
        rows.append(("due", when(r.due_at)))
    if r.started_at:
        rows.append(("started", when(r.started_at)))
    if r.finished_at:
        rows.append(("finished", when(r.finished_at)))
    if r.next_retry_at:
        rows.append(("next retry", when(r.next_retry_at)))
    if r.keys:
        rows.append(("keys", " ".join(f"{k}={v}" for k, v in r.keys.items())))
    if r.duplicate_of:
        rows.append(("duplicate of", r.duplicate_of))
    if r.error:
        label = "last error" if r.status.value in ("done", "running", "queued") else "error"
        rows.append((label, click.style(first_line(mask_urls(str(r.error)), 300), fg="red")))
    rows.append(("args", cut(json.dumps(r.args, ensure_ascii=False), 500) if r.args is not None else "-"))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if r.stack:
        lines += ["", click.style("Stack (where it runs now, innermost last)", bold=True)]
        for frame in r.stack[-15:]:
            lines.append(f"  {frame.get('file')}:{frame.get('line')} in {frame.get('function')}")
            if frame.get("code"):
                lines.append(f"      {frame['code']}")
    if r.events:
        lines += ["", click.style("History", bold=True)]
        for e in r.events:
            lines.append(f"  {iso(e.at)}  {status_word(e.status.ljust(9))} {e.detail}")
    if r.error and r.error.traceback and r.status.value in ("failed", "retrying"):
        lines += ["", click.style("Traceback of the last error", bold=True)]
        lines += ["  " + mask_urls(line) for line in r.error.traceback.rstrip().splitlines()]
    return "\n".join(lines)


def job_table(records: Sequence[JobRecord]) -> str:
    """The table of ``jobs list``."""
    header = ("ID", "ACTOR", "STATUS", "SINCE", "TRIES", "KEYS", "LAST ERROR")
    rows = []
    for r in records:
        rows.append(
            (
                r.id,
                r.actor,
                r.status.value,
                ago(_ms(r.since)),
                str(r.attempts),
                " ".join(f"{k}={v}" for k, v in r.keys.items()) or "-",
                (first_line(mask_urls(str(r.error)), 60) if r.error else "-"),
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  " + header[-1]]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)]
        cells[2] = status_word(row[2]) + " " * (widths[2] - len(row[2]))
        out.append("  ".join(cells) + "  " + row[-1])
    return "\n".join(out)


def corrupt_note(ids: Sequence[str], show: str) -> str:
    """The one line that says a listing skipped records it cannot decode (``show``: the command that says why)."""
    n = len(ids)
    named = ", ".join(ids[:5]) + (f", … ({n - 5} more)" if n > 5 else "")
    return f"warning: skipped {n} corrupt record{'s' if n != 1 else ''} ({show} ID says why): {named}"
