"""What the platform is doing, for people watching it: queues as RQ and SQL count them, throughput,
wait and run times, and the workers. The domain behind `/api/v1/queues` and `/api/v1/workers`.

RQ's side is counted, never listed: `LLEN` of each queue and `ZCARD` of each registry, all in one
pipelined round trip, however many jobs wait. SQL's side is read from the counts the database
keeps per tenant, queue and status (`backend.counts`), never by counting rows, scoped to a tenant
when one is given (RQ's counts are across tenants, so only platform admins see them).
Throughput is counted in SQL per bucket over every job that finished inside the window; the
percentiles come from the newest `STATS_SAMPLE` of them, read as timestamps, because SQLite has no
percentile function.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.worker import Worker
from sqlalchemy import Integer, Select, cast, func, literal, select
from sqlalchemy.orm import Session

from backend import counts
from backend.db import UTCDateTime, seconds_between
from backend.enums import QUEUE_ORDER, WEBHOOK_QUEUE, JobStatus
from backend.errors import InvalidInput, NotFound
from backend.models import JobRow
from backend.queues import PAUSED_KEY, LanesJob

#: Every queue a worker drains, in the default order.
ALL_QUEUES: tuple[str, ...] = (*(q.value for q in QUEUE_ORDER), WEBHOOK_QUEUE)
#: RQ's registry keys per queue (RQ's own templates), counted with ZCARD.
REGISTRIES = {
    "started": StartedJobRegistry.key_template,
    "scheduled": ScheduledJobRegistry.key_template,
    "deferred": DeferredJobRegistry.key_template,
    "finished": FinishedJobRegistry.key_template,
    "failed": FailedJobRegistry.key_template,
    "canceled": CanceledJobRegistry.key_template,
}
#: The most finished jobs whose wait and run times a stats window reads for its percentiles.
STATS_SAMPLE = 1_000


def rq_counts(redis: Redis, queues: tuple[str, ...] = ALL_QUEUES) -> dict[str, dict[str, int]]:
    """Per queue: `queued` (its list) and each registry's size, in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for name in queues:
            pipe.llen(f"rq:queue:{name}")
            for key in REGISTRIES.values():
                pipe.zcard(key.format(name))
        replies = pipe.execute()
    width = 1 + len(REGISTRIES)
    found = {}
    for index, name in enumerate(queues):
        values = replies[index * width : (index + 1) * width]
        found[name] = {
            "queued": int(values[0]),
            **{k: int(v) for k, v in zip(REGISTRIES, values[1:], strict=True)},
        }
    return found


def sql_counts(session: Session, *, tenant_id: str | None) -> dict[str, dict[str, int]]:
    """Per queue, the rows in each status (every status present, zeros included)."""
    found: dict[str, dict[str, int]] = {q.value: _zeros() for q in QUEUE_ORDER}
    for queue, status, count in counts.counts(session, tenant_id=tenant_id):
        found.setdefault(queue, _zeros())[status] = count
    return found


def queue_stats(
    session: Session, *, tenant_id: str | None, now: datetime, window_s: int, bucket_s: int = 60
) -> dict[str, Any]:
    """Throughput (succeeded and failed per bucket) and wait and run time percentiles, per queue.

    Over the jobs that finished within `window_s` before `now`; wait is `started_at − enqueued_at`
    of the last attempt, run is `finished_at − started_at`. The throughput counts every job in
    the window, grouped in SQL on an index that holds every column it reads
    (`ix_jobs_status_finished_queue`), so no row is fetched; the percentiles rest on the newest
    `STATS_SAMPLE` of them, read from the same index.
    """
    since = now - timedelta(seconds=window_s)
    buckets = math.ceil(window_s / bucket_s)
    series: dict[str, dict[str, list[int]]] = defaultdict(
        lambda: {"succeeded": [0] * buckets, "failed": [0] * buckets}
    )
    for queue, status, bucket, jobs in session.execute(_throughput(session, tenant_id, since, now, bucket_s)):
        series[queue][status][min(buckets - 1, max(0, int(bucket)))] += int(jobs)
    waits: dict[str, list[float]] = defaultdict(list)
    runs: dict[str, list[float]] = defaultdict(list)
    sample = _newest_finished(session, tenant_id, since, now)
    for queue, _, wait_s, run_s in sample:
        if run_s is not None:
            runs[queue].append(max(0.0, float(run_s)))
            if wait_s is not None:
                waits[queue].append(max(0.0, float(wait_s)))
    queues = {}
    ordered = [q.value for q in QUEUE_ORDER]
    for queue in ordered + sorted(set(series) - set(ordered)):
        done = series[queue]
        queues[queue] = {
            "succeeded": sum(done["succeeded"]),
            "failed": sum(done["failed"]),
            "throughput": [
                {"at": since + timedelta(seconds=i * bucket_s), "succeeded": s, "failed": f}
                for i, (s, f) in enumerate(zip(done["succeeded"], done["failed"], strict=True))
            ],
            "wait_s": _percentiles(waits[queue]),
            "run_s": _percentiles(runs[queue]),
        }
    return {
        "window_s": window_s,
        "bucket_s": bucket_s,
        "since": since,
        "until": now,
        "sampled": len(sample),
        "sample_limit": STATS_SAMPLE,
        "queues": queues,
    }


ENDED_STATUSES = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)


def _in_window(query: Any, tenant_id: str | None, since: datetime, now: datetime) -> Any:
    query = query.where(JobRow.finished_at >= since, JobRow.finished_at <= now)
    return query if tenant_id is None else query.where(JobRow.tenant_id == tenant_id)


def _throughput(
    session: Session, tenant_id: str | None, since: datetime, now: datetime, bucket_s: int
) -> Select[Any]:
    """(queue, status, bucket, jobs) of the jobs that ended in the window, `bucket` from 0."""
    dialect = session.get_bind().dialect.name
    seconds = seconds_between(dialect, JobRow.finished_at, literal(since, UTCDateTime()))
    if dialect == "postgresql":
        bucket: Any = func.floor(seconds / bucket_s)
    else:
        bucket = cast(seconds / bucket_s, Integer)  # never negative: truncation is the floor
    query = (
        select(JobRow.queue, JobRow.status, bucket.label("bucket"), func.count())
        .where(JobRow.status.in_(ENDED_STATUSES))
        .group_by(JobRow.queue, JobRow.status, bucket)
    )
    return _in_window(query, tenant_id, since, now)


def _newest_finished(
    session: Session, tenant_id: str | None, since: datetime, now: datetime
) -> list[tuple[str, float, float | None, float | None]]:
    """(queue, seconds from `since` to its end, wait_s, run_s) of the newest `STATS_SAMPLE` jobs
    that ended in the window: the newest of each status (an index walk each, newest first), then
    merged. A status read after a full sample of another needs only the jobs that ended since the
    oldest of it: with succeeded jobs read first, the failed ones are a short walk. The database
    works out the spans, so no timestamp is parsed here."""
    dialect = session.get_bind().dialect.name
    ended = seconds_between(dialect, JobRow.finished_at, literal(since, UTCDateTime()))
    wait = seconds_between(dialect, JobRow.started_at, JobRow.enqueued_at)
    run = seconds_between(dialect, JobRow.finished_at, JobRow.started_at)
    found: list[tuple[str, float, float | None, float | None]] = []
    oldest = since
    for status in ENDED_STATUSES:
        query = (
            select(JobRow.queue, ended, wait, run)
            .where(JobRow.status == status)
            .order_by(JobRow.finished_at.desc())
            .limit(STATS_SAMPLE)
        )
        rows = [tuple(row) for row in session.execute(_in_window(query, tenant_id, oldest, now))]
        found += rows
        if len(rows) == STATS_SAMPLE:  # a millisecond early: the span is a float
            oldest = max(oldest, since + timedelta(seconds=float(rows[-1][1]) - 0.001))
    found.sort(key=lambda row: row[1], reverse=True)
    return found[:STATS_SAMPLE]


def workers(redis: Redis, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every registered worker: who and where it is, its queues and state, its current job."""
    now = now or datetime.now(UTC)
    found = []
    for worker in Worker.all(connection=redis, job_class=LanesJob):
        current = worker.get_current_job_id()
        started = _job_started_at(redis, current) if current else None
        heartbeat = _aware(worker.last_heartbeat)
        found.append(
            {
                "name": worker.name,
                "hostname": worker.hostname,
                "pid": worker.pid,
                "queues": worker.queue_names(),
                "state": str(worker.get_state()),
                "current_job": current,
                "current_job_started_at": started,
                "current_job_elapsed_s": round((now - started).total_seconds(), 3) if started else None,
                "successful_jobs": worker.successful_job_count,
                "failed_jobs": worker.failed_job_count,
                "birth_at": _aware(worker.birth_date),
                "last_heartbeat_at": heartbeat,
            }
        )
    return sorted(found, key=lambda w: w["name"])


def _job_started_at(redis: Redis, job_id: str) -> datetime | None:
    raw = redis.hget(f"rq:job:{job_id}", "started_at")
    if not raw:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC)
    except ValueError:
        return None


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p95 (nearest rank), and how many values they rest on."""
    if not values:
        return {"p50": None, "p95": None, "count": 0}
    ordered = sorted(values)
    return {
        "p50": round(_rank(ordered, 0.50), 3),
        "p95": round(_rank(ordered, 0.95), 3),
        "count": len(ordered),
    }


def _rank(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _zeros() -> dict[str, int]:
    return {status.value: 0 for status in JobStatus}


def paused_queues(redis: Redis) -> set[str]:
    """The queues an admin paused."""
    return {name.decode() if isinstance(name, bytes) else str(name) for name in redis.smembers(PAUSED_KEY)}


def pause(redis: Redis, queue: str, *, paused: bool) -> None:
    """Pause a queue (workers stop taking its jobs within a poll; submits still go in), or resume it."""
    if queue not in ALL_QUEUES:
        raise NotFound(f"queue {queue!r} not found", code="queue_not_found")
    if paused:
        redis.sadd(PAUSED_KEY, queue)
    else:
        redis.srem(PAUSED_KEY, queue)


def queued_ids(redis: Redis, queue: str) -> list[str]:
    """The ids waiting on a job queue, head first; `InvalidInput` for the webhooks queue."""
    if queue not in ALL_QUEUES:
        raise NotFound(f"queue {queue!r} not found", code="queue_not_found")
    if queue == WEBHOOK_QUEUE:
        raise InvalidInput("the webhooks queue holds deliveries, not jobs", code="not_a_job_queue")
    return [
        raw.decode() if isinstance(raw, bytes) else str(raw)
        for raw in redis.lrange(f"rq:queue:{queue}", 0, -1)
    ]
