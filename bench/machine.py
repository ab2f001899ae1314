"""Date, versions and machine of a run, for the results table."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def _git() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        return {"commit": commit, "src_modified": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {}


def redis_version(url: str) -> str | None:
    try:
        return str(redis.Redis.from_url(url, socket_connect_timeout=2).info("server")["redis_version"])
    except Exception:
        return None


def rabbitmq_version(url: str) -> str | None:
    try:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            version = conn._impl.server_properties.get("version")
        finally:
            conn.close()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def describe(*, store_url: str, redis_url: str, amqp_url: str | None) -> dict[str, Any]:
    """Everything a reader needs to place the figures."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "dramatiq-reliable": _version("dramatiq-reliable"),
            "git": _git(),
            "dramatiq": _version("dramatiq"),
            "redis-py": _version("redis"),
            "hiredis": _version("hiredis"),
            "pika": _version("pika"),
            "python": platform.python_version(),
            "store redis-server": redis_version(store_url),
            "broker redis-server": redis_version(redis_url),
            "rabbitmq": rabbitmq_version(amqp_url) if amqp_url else None,
        },
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": _memory_gib(),
            "kernel": f"{platform.system()} {platform.release()}",
            "loadavg_start": loadavg(),
        },
    }
