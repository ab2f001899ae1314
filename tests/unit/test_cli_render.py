"""What the CLI's human views show of long errors and tracebacks, and of a dead letter's options."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from dramatiq_reliable.cli import dead_render, render
from dramatiq_reliable.records import DeadLetter, JobRecord

NOW = 1_763_700_000_000
TRACEBACK = "\n".join(
    ["Traceback (most recent call last):"]
    + [f'  File "app/step{i}.py", line {i}, in step{i}\n    step{i + 1}()' for i in range(20)]
    + ["smtplib.SMTPServerDisconnected: the server hung up"]
)


def failed_job(message: str) -> JobRecord:
    return JobRecord.from_stored(
        {
            "actor": "send_invoice",
            "queue": "default",
            "status": "failed",
            "att": 3,
            "enq": NOW,
            "fin": NOW,
            "err": {"type": "SMTPServerDisconnected", "message": message, "traceback": TRACEBACK},
            "ev": [[NOW, "failed", "gave up"]],
        },
        "j1",
    )


def plain(text: str) -> str:
    return click.unstyle(text)


def test_jobs_show_prints_the_whole_traceback() -> None:
    out = plain(render.job_detail(failed_job("the server hung up")))
    # The head of the traceback (the outermost frames) is there, not only its last lines
    assert "Traceback (most recent call last):" in out
    assert 'File "app/step0.py", line 0, in step0' in out
    assert "smtplib.SMTPServerDisconnected: the server hung up" in out


def test_a_cut_error_ends_with_an_ellipsis() -> None:
    long = "connection to smtp.example.com:25 refused " * 5
    [row] = plain(render.job_table([failed_job(long)])).splitlines()[1:]
    assert row.endswith("…") and len(row.split("  ")[-1].strip()) <= 60
    short = failed_job("refused")
    assert not plain(render.job_table([short])).endswith("…")
    # A multi-line message shows its first line, and says there was more
    assert plain(render.job_table([failed_job("refused\nmore details")])).endswith("…")
    letter = DeadLetter(job=failed_job(long), dead_at=datetime.now(UTC), message={})
    assert dead_render.error_line(letter).endswith("…") and len(dead_render.error_line(letter)) == 70
    assert dead_render.error_line(DeadLetter(job=short, dead_at=datetime.now(UTC), message={})).endswith("refused")


def test_dead_show_leaves_out_the_bundles_own_message_options() -> None:
    message = {
        "message_id": "j1",
        "options": {"priority": 5, "dr_ready_at": NOW, "dr_recorded": True, "traceback": "x", "retries": 3},
    }
    job = failed_job("refused")
    out = plain(dead_render.detail(DeadLetter(job=job, dead_at=datetime.now(UTC), message=message)))
    [options] = [line for line in out.splitlines() if line.strip().startswith("options")]
    assert '"priority": 5' in options and '"retries": 3' in options
    assert "dr_" not in options and "traceback" not in options
