"""Is the platform able to do work? Redis, the database, live workers and schedulers, checked for real."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, ResponseError
from rq.worker_registration import get_keys
from rq_scheduler import Scheduler
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from backend.enums import JobStatus
from backend.models import JobRow, ScheduleRow
from backend.queues import MIRROR_PENDING_KEY

#: The scheduler daemon's registration keys (rq-scheduler's; they expire when heartbeats stop).
SCHEDULER_KEYS = f"{Scheduler.redis_scheduler_namespace_prefix}*"
#: Lanes' set of those keys, added to at every scheduler heartbeat: health reads the few keys it
#: names instead of scanning a keyspace that holds a hash per job.
SCHEDULERS_KEY = "lanes:schedulers"


@dataclass
class SchedulerHealth:
    """The live scheduler daemons, and the latest of what their heartbeats report."""

    running: int = 0
    last_heartbeat_at: datetime | None = None
    last_sync_at: datetime | None = None
    last_reconcile_at: datetime | None = None
    last_reconcile: str | None = None
    last_prune_at: datetime | None = None


@dataclass
class Health:
    redis: str = "ok"
    database: str = "ok"
    workers: int = 0
    scheduler: SchedulerHealth = field(default_factory=SchedulerHealth)
    #: Why it is unhealthy (503): work cannot be taken or done.
    reasons: list[str] = field(default_factory=list)
    #: Why it is degraded (still 200): work is done, but something needs a look.
    warnings: list[str] = field(default_factory=list)
    redis_latency_ms: float | None = None
    redis_memory_bytes: int | None = None
    oldest_queued_age_s: float | None = None
    mirror_pending: int | None = None

    @property
    def healthy(self) -> bool:
        return not self.reasons

    @property
    def status(self) -> str:
        """`unhealthy` (reasons), `degraded` (only warnings) or `healthy`."""
        return "unhealthy" if self.reasons else "degraded" if self.warnings else "healthy"


def live_worker_count(redis: Redis) -> int:
    """Workers whose heartbeat key has not expired (RQ's registry set may still hold dead ones)."""
    keys = list(get_keys(connection=redis))
    if not keys:
        return 0
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        return sum(1 for alive in pipe.execute() if alive)


def scheduler_health(redis: Redis, *, scan: bool = False) -> SchedulerHealth:
    """Schedulers whose registration is alive (not expired, no `death`), newest times first.

    The registrations are those `SCHEDULERS_KEY` names; one that has expired leaves the set. With
    `scan`, an empty set (no scheduler has beaten since it was made, or only older versions run)
    sends it looking for the keys with a SCAN, which costs a round trip per 1,000 keys in Redis.
    """
    keys = list(redis.smembers(SCHEDULERS_KEY))
    if not keys and scan:
        keys = list(redis.scan_iter(match=SCHEDULER_KEYS, count=1000))
    health = SchedulerHealth()
    if not keys:
        return health
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        found: list[dict[bytes, bytes]] = pipe.execute()
    gone = [key for key, fields in zip(keys, found, strict=True) if not fields]
    if gone:
        redis.srem(SCHEDULERS_KEY, *gone)
    for fields in found:
        if not fields or b"death" in fields:
            continue
        health.running += 1
        for attribute, hash_field in _STAMPS.items():
            stamp = _stamp(fields.get(hash_field))
            latest = getattr(health, attribute)
            if stamp is not None and (latest is None or stamp > latest):
                setattr(health, attribute, stamp)
                if attribute == "last_reconcile_at":
                    health.last_reconcile = fields.get(b"last_reconcile", b"").decode() or None
    return health


#: SchedulerHealth attribute -> the heartbeat hash field it comes from (unix seconds).
_STAMPS = {
    "last_heartbeat_at": b"heartbeat",
    "last_sync_at": b"last_sync_at",
    "last_reconcile_at": b"last_reconcile_at",
    "last_prune_at": b"last_prune_at",
}


def _stamp(raw: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (TypeError, ValueError):
        return None


def check_health(
    *, session: Session, redis: Redis, now: datetime | None = None, queue_age_s: float = 300.0
) -> Health:
    """Redis, the database, workers and schedulers, and the signs of trouble short of an outage.

    Unhealthy: Redis or the database does not answer, no live worker, or enabled schedules and no
    scheduler. Degraded: the oldest queued job has waited more than `queue_age_s`, or mirror writes
    wait to be replayed.
    """
    health = Health()
    now = now or datetime.now(UTC)
    try:
        started = time.perf_counter()
        redis.ping()
        health.redis_latency_ms = round((time.perf_counter() - started) * 1000, 3)
        with contextlib.suppress(ResponseError):  # INFO may be disabled (managed Redis, ACLs)
            health.redis_memory_bytes = int(redis.info("memory").get("used_memory", 0))
        health.mirror_pending = int(redis.scard(MIRROR_PENDING_KEY))
        if health.mirror_pending:
            health.warnings.append(
                f"{health.mirror_pending} job(s) wait for a failed SQL write to be replayed"
            )
        health.workers = live_worker_count(redis)
        if health.workers == 0:
            health.reasons.append("no live workers: jobs will wait until one starts")
        health.scheduler = scheduler_health(redis)
    except RedisError as exc:
        health.redis = f"unavailable: {type(exc).__name__}"
        health.reasons.append(f"redis unavailable: {exc}")
    try:
        session.execute(text("SELECT 1"))
        if health.redis == "ok" and health.scheduler.running == 0:
            enabled = session.scalar(
                select(func.count()).select_from(ScheduleRow).where(ScheduleRow.enabled.is_(True))
            )
            if enabled:
                # Only here does a scheduler missing from the set matter: look for one by its key.
                with contextlib.suppress(RedisError):
                    health.scheduler = scheduler_health(redis, scan=True)
            if enabled and health.scheduler.running == 0:
                health.reasons.append(f"no scheduler running: {enabled} enabled schedule(s) will not fire")
        oldest = session.scalar(
            select(func.min(JobRow.enqueued_at)).where(JobRow.status == JobStatus.QUEUED.value)
        )
        if oldest is not None:
            health.oldest_queued_age_s = round(max(0.0, (now - oldest).total_seconds()), 3)
            if health.oldest_queued_age_s > queue_age_s:
                health.warnings.append(
                    f"the oldest queued job has waited {health.oldest_queued_age_s:.0f} s"
                    f" (more than {queue_age_s:g} s): too few workers?"
                )
    except SQLAlchemyError as exc:
        health.database = f"unavailable: {type(exc).__name__}"
        health.reasons.append(f"database unavailable: {type(exc).__name__}")
    return health


def check_ready(*, session: Session, redis: Redis) -> list[str]:
    """Why this API process cannot serve requests now (Redis or the database away); empty when it can.

    Unlike `check_health`, live workers and schedulers do not count: an orchestrator asks this to
    decide whether to send the process traffic, and the API accepts jobs while no worker runs.
    """
    reasons = []
    try:
        redis.ping()
    except RedisError as exc:
        reasons.append(f"redis unavailable: {type(exc).__name__}")
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reasons.append(f"database unavailable: {type(exc).__name__}")
    return reasons
