"""Is the platform able to do work? Redis, the database, live workers and schedulers, checked for real."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.worker_registration import get_keys
from rq_scheduler import Scheduler
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from backend.models import ScheduleRow

#: The scheduler daemon's registration keys (rq-scheduler's; they expire when heartbeats stop).
SCHEDULER_KEYS = f"{Scheduler.redis_scheduler_namespace_prefix}*"


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
    reasons: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.reasons


def live_worker_count(redis: Redis) -> int:
    """Workers whose heartbeat key has not expired (RQ's registry set may still hold dead ones)."""
    keys = list(get_keys(connection=redis))
    if not keys:
        return 0
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        return sum(1 for alive in pipe.execute() if alive)


def scheduler_health(redis: Redis) -> SchedulerHealth:
    """Schedulers whose registration is alive (not expired, no `death`), newest times first."""
    keys = list(redis.scan_iter(match=SCHEDULER_KEYS, count=500))
    health = SchedulerHealth()
    if not keys:
        return health
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        found: list[dict[bytes, bytes]] = pipe.execute()
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


def check_health(*, session: Session, redis: Redis) -> Health:
    health = Health()
    try:
        redis.ping()
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
                health.reasons.append(f"no scheduler running: {enabled} enabled schedule(s) will not fire")
    except SQLAlchemyError as exc:
        health.database = f"unavailable: {type(exc).__name__}"
        health.reasons.append(f"database unavailable: {type(exc).__name__}")
    return health
