"""Is the platform able to do work? Redis, the database and live workers, each checked for real."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError
from rq.worker_registration import get_keys
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session


@dataclass
class Health:
    redis: str = "ok"
    database: str = "ok"
    workers: int = 0
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


def check_health(*, session: Session, redis: Redis) -> Health:
    health = Health()
    try:
        redis.ping()
        health.workers = live_worker_count(redis)
        if health.workers == 0:
            health.reasons.append("no live workers: jobs will wait until one starts")
    except RedisError as exc:
        health.redis = f"unavailable: {type(exc).__name__}"
        health.reasons.append(f"redis unavailable: {exc}")
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        health.database = f"unavailable: {type(exc).__name__}"
        health.reasons.append(f"database unavailable: {type(exc).__name__}")
    return health
