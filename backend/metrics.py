"""Prometheus metrics, exported by the API at `GET /metrics` (prometheus-client's text format).

Two kinds:

- **Read at scrape time** from Redis and SQL, so every API replica exports the same truth: queue
  depth and RQ's registries per queue, jobs per queue and status (SQL), live workers, the oldest
  queued job's age. Counted, never listed (`backend.observe`).
- **Counted where things happen** (the API, every worker process on every host, the webhook
  deliveries), in one Redis hash, `lanes:metrics`, with `HINCRBY`: submitted, succeeded, failed and
  retried jobs by task, mirror write failures, webhook delivery outcomes, rate-limit rejections,
  and the run and wait time histograms per queue (a field per bucket, plus sum and count). Redis
  is what every process already shares, so several processes on several hosts add up without
  prometheus-client's multiprocess directory (one host only). A field reads
  `<name>|<label>=<value>,…`. A Redis flush resets them, which Prometheus reads as a counter reset.

Counting never fails the work it counts: a Redis error is logged once a minute and dropped.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.client import Pipeline
from rq.exceptions import StopRequested
from rq.timeouts import BaseTimeoutException
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from backend import observe
from backend.enums import JobStatus
from backend.health import live_worker_count
from backend.models import JobRow

log = logging.getLogger(__name__)

COUNTERS_KEY = "lanes:metrics"
#: Bucket bounds of the run and wait time histograms (seconds).
TIME_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
)
#: The counters and what they say (name without `_total` -> help).
COUNTERS = {
    "lanes_jobs_submitted": "Jobs accepted by the API (submits, batch items, schedule firings and runs).",
    "lanes_jobs_succeeded": "Jobs that succeeded.",
    "lanes_jobs_failed": "Jobs that failed with no retries left.",
    "lanes_jobs_retried": "Failed attempts that will be retried.",
    "lanes_mirror_write_failures": "SQL mirror writes that failed in a worker (replayed later).",
    "lanes_webhook_deliveries": "Webhook delivery attempts, by outcome.",
    "lanes_rate_limited": "Calls refused by a rate limit, by limit.",
}
HISTOGRAMS = {
    "lanes_job_run_seconds": "From a job's start to its end (each attempt).",
    "lanes_job_wait_seconds": "From a job's enqueue to its start (each attempt).",
}
_LOG_EVERY_S = 60.0
_last_log = -math.inf


def count(redis: Redis, name: str, amount: int = 1, **labels: str) -> None:
    """Add `amount` to counter `name` with `labels`; never raises."""
    _send(redis, [(name, labels, amount, None)])


def observe_time(redis: Redis, name: str, seconds: float, **labels: str) -> None:
    """Put one observation into histogram `name`; never raises."""
    _send(redis, [(name, labels, None, seconds)])


def record(
    redis: Redis,
    counters: Iterable[tuple[str, dict[str, str], int]],
    times: Iterable[tuple[str, dict[str, str], float]] = (),
) -> None:
    """Several counts and observations in one round trip; never raises."""
    _send(
        redis,
        [(n, labels, amount, None) for n, labels, amount in counters]
        + [(n, labels, None, s) for n, labels, s in times],
    )


def _send(redis: Redis, items: list[tuple[str, dict[str, str], int | None, float | None]]) -> None:
    tally = Tally()
    for name, labels, amount, seconds in items:
        if amount is not None:
            tally.count(name, labels, amount)
        elif seconds is not None:
            tally.observe(name, labels, seconds)
    tally.send(redis)


class Tally:
    """Counts and observations added up in memory, then sent in one pipeline, one command a field.

    A worker that keeps one for a second sends the same figures in far fewer commands.
    """

    def __init__(self) -> None:
        self.ints: dict[str, int] = {}
        self.floats: dict[str, float] = {}

    def __bool__(self) -> bool:
        return bool(self.ints or self.floats)

    def count(self, name: str, labels: dict[str, str], amount: int = 1) -> None:
        field = _field(name, labels)
        self.ints[field] = self.ints.get(field, 0) + amount

    def observe(self, name: str, labels: dict[str, str], seconds: float) -> None:
        index = bisect.bisect_left(TIME_BUCKETS_S, seconds)
        bound = _le(TIME_BUCKETS_S[index]) if index < len(TIME_BUCKETS_S) else "+Inf"
        self.count(f"{name}_bucket", {**labels, "le": bound})
        self.count(f"{name}_count", labels)
        field = _field(f"{name}_sum", labels)
        self.floats[field] = self.floats.get(field, 0.0) + max(0.0, seconds)

    def queue_on(self, pipe: Pipeline) -> None:
        """Add everything to the shared hash within `pipe`: a caller's transaction, so the counts land
        with the work they count. The tally is kept, for a transaction that is built again."""
        _add(pipe, self.ints, self.floats)

    def send(self, redis: Redis) -> None:
        """Add everything to the shared hash and start again from nothing; never raises."""
        global _last_log
        ints, floats = self.ints, self.floats
        self.ints, self.floats = {}, {}
        if not ints and not floats:
            return
        try:
            with redis.pipeline(transaction=False) as pipe:
                _add(pipe, ints, floats)
                pipe.execute()
        except (StopRequested, BaseTimeoutException):
            raise  # a worker's stop request or a job's timeout, raised from a signal handler mid-call
        except Exception as exc:  # metrics never fail the work they count
            if time.monotonic() - _last_log >= _LOG_EVERY_S:
                _last_log = time.monotonic()
                log.warning("metrics not counted (%s: %s)", type(exc).__name__, exc)


def _add(pipe: Pipeline, ints: dict[str, int], floats: dict[str, float]) -> None:
    """One `HINCRBY` (or `HINCRBYFLOAT`) of the shared hash a field, queued on `pipe`."""
    for field, amount in ints.items():
        pipe.hincrby(COUNTERS_KEY, field, amount)
    for field, total in floats.items():
        pipe.hincrbyfloat(COUNTERS_KEY, field, total)


def _field(name: str, labels: dict[str, str]) -> str:
    return name + "|" + ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _le(bound: float) -> str:
    return repr(float(bound))


def _parse(field: str) -> tuple[str, dict[str, str]]:
    name, _, rest = field.partition("|")
    labels = dict(part.split("=", 1) for part in rest.split(",") if "=" in part)
    return name, labels


class LanesCollector(Collector):
    """What `/metrics` exports: read from Redis and SQL at each scrape."""

    def __init__(self, *, sessions: sessionmaker[Session], redis: Redis) -> None:
        self.sessions = sessions
        self.redis = redis

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._jobs()
        yield from self._counted()

    def _queues(self) -> Iterator[Metric]:
        counts = observe.rq_counts(self.redis)
        depth = GaugeMetricFamily(
            "lanes_queue_depth", "Jobs waiting on each queue (RQ's list).", labels=["queue"]
        )
        registry = GaugeMetricFamily(
            "lanes_queue_registry_jobs",
            "Jobs in each of RQ's registries, per queue.",
            labels=["queue", "registry"],
        )
        for queue, found in counts.items():
            depth.add_metric([queue], found["queued"])
            for name in observe.REGISTRIES:
                registry.add_metric([queue, name], found[name])
        yield depth
        yield registry
        workers = GaugeMetricFamily("lanes_workers", "Live workers (heartbeat not expired).")
        workers.add_metric([], live_worker_count(self.redis))
        yield workers

    def _jobs(self) -> Iterator[Metric]:
        with self.sessions() as session:
            counts = observe.sql_counts(session, tenant_id=None)
            oldest = session.scalar(
                select(func.min(JobRow.enqueued_at)).where(JobRow.status == JobStatus.QUEUED.value)
            )
        jobs = GaugeMetricFamily("lanes_jobs", "Jobs in SQL by queue and status.", labels=["queue", "status"])
        for queue, statuses in counts.items():
            for status, number in statuses.items():
                jobs.add_metric([queue, status], number)
        yield jobs
        age = GaugeMetricFamily(
            "lanes_oldest_queued_job_age_seconds", "How long the oldest queued job has waited."
        )
        age.add_metric([], (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0)
        yield age

    def _counted(self) -> Iterator[Metric]:
        raw = self.redis.hgetall(COUNTERS_KEY)
        counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        for key, value in raw.items():
            name, labels = _parse(key.decode() if isinstance(key, bytes) else key)
            counters[name][tuple(sorted(labels.items()))] = float(value)
        for name, help_text in COUNTERS.items():
            series = counters.get(name, {})
            label_names = sorted({k for pairs in series for k, _ in pairs})
            family = CounterMetricFamily(name, help_text, labels=label_names)
            for pairs, number in series.items():
                as_dict = dict(pairs)
                family.add_metric([as_dict.get(k, "") for k in label_names], number)
            yield family
        for name, help_text in HISTOGRAMS.items():
            yield from _histograms(name, help_text, counters)


def _histograms(
    name: str, help_text: str, counters: dict[str, dict[tuple[tuple[str, str], ...], float]]
) -> Iterator[Metric]:
    family = HistogramMetricFamily(name, help_text, labels=["queue"])
    buckets: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in counters.get(f"{name}_bucket", {}).items():
        as_dict = dict(labels)
        buckets[as_dict.get("queue", "")][as_dict["le"]] = value
    sums = {dict(labels).get("queue", ""): value for labels, value in counters.get(f"{name}_sum", {}).items()}
    for queue, found in sorted(buckets.items()):
        cumulative = 0.0
        series: list[tuple[str, float]] = []
        for bound in [*(_le(b) for b in TIME_BUCKETS_S), "+Inf"]:
            cumulative += found.get(bound, 0.0)
            series.append((bound, cumulative))
        family.add_metric([queue], series, sum_value=sums.get(queue, 0.0))
    yield family


def job_times(job: Any) -> dict[str, float]:
    """An RQ job's wait (enqueued to started) and run (started to ended) in seconds, where known."""
    found = {}
    enqueued, started, ended = (
        _utc(getattr(job, name, None)) for name in ("enqueued_at", "started_at", "ended_at")
    )
    if enqueued is not None and started is not None:
        found["wait"] = max(0.0, (started - enqueued).total_seconds())
    if started is not None and ended is not None:
        found["run"] = max(0.0, (ended - started).total_seconds())
    return found


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
