"""Human views of dead letters for the CLI: what died, why, and what was done about it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from .._clock import ago
from .._secrets import TextMask, redact_message
from ..records import DeadLetter, DeadResult, DeadStats
from .render import cut, first_line, job_detail, when


def _ms(letter: DeadLetter) -> float:
    return letter.dead_at.timestamp() * 1000


def shown(letter: DeadLetter) -> tuple[dict[str, Any] | None, TextMask]:
    """The letter's message as it may be shown (secret arguments hidden), and the mask of its secrets.

    The store keeps the message whole, as a replay needs it; what is displayed hides the
    arguments the job's snapshot redacts, and masks their values (and URL credentials) in the
    error, the traceback and the options (a retry's ``traceback``), whatever recorded them.
    """
    if letter.message is None:
        return None, TextMask()
    return redact_message(letter.message, letter.job.args)


def shown_json(letter: DeadLetter) -> dict[str, Any]:
    """The letter's ``--json`` object, secrets hidden (see :func:`shown`)."""
    message, mask = shown(letter)
    out = letter.to_json()
    out["message"] = message
    return json.loads(mask(json.dumps(out, ensure_ascii=False)))  # type: ignore[no-any-return]


def error_line(letter: DeadLetter, width: int = 70) -> str:
    """The error column of ``dead list``: one line, ending with "…" when cut."""
    if letter.malformed:
        return first_line(f"MALFORMED: {letter.malformed}", width)
    if letter.error is None:
        return "-" if letter.recorded else "(not recorded)"
    text = shown(letter)[1](str(letter.error)) or letter.error.type
    if letter.recorded:
        return first_line(text, width)
    suffix = " (not recorded)"
    return first_line(text, width - len(suffix)) + suffix


def table(letters: Sequence[DeadLetter]) -> str:
    """The table of ``dead list``."""
    header = ("ID", "ACTOR", "QUEUE", "DIED", "TRIES", "ERROR")
    rows = [(x.id, x.actor, x.queue, ago(_ms(x)), str(x.job.attempts or "-"), error_line(x)) for x in letters]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  " + header[-1]]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        out.append("  ".join(cells) + "  " + click.style(row[-1], fg="red"))
    return "\n".join(out)


def detail(letter: DeadLetter) -> str:
    """The view of ``dead show``: the job, then the dead letter and its message."""
    how = "captured by DeadLetters" if letter.recorded else "found in the broker; its final error was not recorded"
    message, mask = shown(letter)
    lines = [job_detail(letter.job), "", click.style("Dead letter", bold=True)]
    lines.append(f"  dead-lettered  {when(letter.dead_at)} from {letter.queue}.XQ ({how})")
    if letter.malformed:
        lines.append(click.style(f"  malformed      {letter.malformed}; it cannot be replayed, only purged", fg="red"))
        lines += ["", click.style("Stored payload", bold=True), "  " + cut(mask(letter.raw or ""), 1000)]
        return mask("\n".join(lines))
    message = message or {}
    options = message.get("options") or {}
    lines.append(f"  message id     {message.get('message_id', '-')}")
    # The stored message keeps the arguments whole (a replay needs them), secrets included: show
    # the record's redacted snapshot (above) instead; --json shows them with the secrets hidden.
    recorded = letter.job.args is not None
    where = "as recorded above (redacted)" if recorded else "not recorded"
    lines.append(f"  arguments      {where}; in --json with secrets hidden")
    # The bundle's own options (dr_*) and the stored traceback are not the sender's options.
    kept = {k: v for k, v in options.items() if k != "traceback" and not k.startswith("dr_")}
    lines.append(f"  options        {cut(mask(json.dumps(kept, ensure_ascii=False)), 500)}")
    lines.append(f"  replay         dramatiq-reliable dead replay {letter.id}")
    if letter.error and letter.error.traceback and letter.job.status.value != "failed":
        lines += ["", click.style("Traceback of the final error", bold=True)]
        lines += ["  " + line for line in letter.error.traceback.rstrip().splitlines()]
    return mask("\n".join(lines))


def stats_view(stats: DeadStats) -> str:
    """The view of ``dead stats``: one line per (actor, error type)."""
    if not stats.total and not stats.in_broker:
        return "No dead letters."
    lines = [click.style(f"{stats.total} dead letter{'s' if stats.total != 1 else ''}", bold=True), ""]
    if stats.by_kind:
        width = max(len(str(n)) for _, _, n in stats.by_kind)
        actor_width = max(len(a) for a, _, _ in stats.by_kind)
        for actor, etype, count in stats.by_kind:
            died = click.style(etype, fg="red")
            lines.append(f"  {str(count).rjust(width)}  {actor.ljust(actor_width)}  died of {died}")
    queues = sorted(set(stats.by_queue) | set(stats.in_broker or {}))
    if queues:
        lines += ["", "  QUEUE" + " " * 20 + "STORED  IN BROKER"]
        for q in queues:
            stored = stats.by_queue.get(q, 0)
            broker = "-" if stats.in_broker is None else str(stats.in_broker.get(q, 0))
            if stored or broker not in ("-", "0"):
                lines.append(f"  {q[:24].ljust(25)}{str(stored).rjust(6)}  {broker.rjust(9)}")
    return "\n".join(lines)


OUTCOME_COLORS = {"replayed": "green", "purged": "green", "would replay": "cyan", "would purge": "cyan"}


def results_view(results: Sequence[DeadResult]) -> str:
    """One line per id, then a summary."""
    width = max((len(r.outcome) for r in results), default=0)
    lines = []
    for r in results:
        word = click.style(r.outcome.ljust(width), fg=OUTCOME_COLORS.get(r.outcome, "red"))
        lines.append(f"{word}  {r.id}" + (f"  {r.detail}" if r.detail else ""))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    lines.append(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)
