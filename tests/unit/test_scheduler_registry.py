"""Health finds the scheduler daemons through the set their heartbeats keep, not by scanning Redis."""

from __future__ import annotations

import time

import fakeredis
from sqlalchemy.orm import sessionmaker

from backend.config import Settings
from backend.health import SCHEDULERS_KEY, scheduler_health
from backend.tasks import registry
from scheduler.scheduler import LanesScheduler


def test_a_heartbeat_names_the_schedulers_registration_in_the_set(fake_redis: fakeredis.FakeRedis) -> None:
    settings = Settings.model_validate({"database_url": "sqlite://", "redis_url": "redis://127.0.0.1:1/0"})
    scheduler = LanesScheduler(
        redis=fake_redis, sessions=sessionmaker(), settings=settings, tasks=registry, name="s1"
    )

    scheduler.register_birth()
    scheduler.heartbeat()

    assert fake_redis.smembers(SCHEDULERS_KEY) == {scheduler.key.encode()}
    assert scheduler_health(fake_redis).running == 1


def test_health_counts_the_live_registrations_the_set_names_and_forgets_the_expired(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    now = time.time()
    fake_redis.hset("rq:scheduler_instance:live", mapping={"birth": now, "heartbeat": now})
    fake_redis.hset("rq:scheduler_instance:stopped", mapping={"birth": now, "heartbeat": now, "death": now})
    fake_redis.sadd(
        SCHEDULERS_KEY,
        "rq:scheduler_instance:live",
        "rq:scheduler_instance:stopped",
        "rq:scheduler_instance:expired",
    )

    health = scheduler_health(fake_redis)

    assert health.running == 1
    assert fake_redis.smembers(SCHEDULERS_KEY) == {
        b"rq:scheduler_instance:live",
        b"rq:scheduler_instance:stopped",
    }


def test_a_registration_outside_the_set_is_looked_for_only_when_asked_to_scan(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    now = time.time()
    fake_redis.hset("rq:scheduler_instance:older", mapping={"birth": now, "heartbeat": now})

    assert scheduler_health(fake_redis).running == 0
    assert scheduler_health(fake_redis, scan=True).running == 1
