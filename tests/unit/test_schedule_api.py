"""Schedules over HTTP against a real Redis: writes reach rq-scheduler's entries at once, run now,
a schedule's jobs, and the scheduler's liveness in health."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis
from rq_scheduler.utils import to_unix

from backend.db import make_engine, make_sessionmaker, utcnow
from backend.schedule_entries import ENTRIES_KEY, entry_id, sync_entries

SCHEDULES = "/api/v1/schedules"


def a_schedule(api: TestClient, **overrides: Any) -> dict[str, Any]:
    body = {"name": "every minute", "task": "demo.echo", "params": {"n": 1}, "cron": "* * * * *"} | overrides
    response = api.post(SCHEDULES, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def score(redis: Redis, schedule_id: str) -> float | None:
    return redis.zscore(ENTRIES_KEY, entry_id(schedule_id))


def test_creating_a_schedule_puts_its_entry_in_redis_at_its_next_run(
    live_api: TestClient, redis: Redis
) -> None:
    created = a_schedule(live_api, timezone="Asia/Kolkata", cron="30 6 * * 1-5")

    assert score(redis, created["id"]) == to_unix(datetime.fromisoformat(created["next_run_at"]))


def test_disabling_takes_the_entry_out_and_enabling_puts_it_back(live_api: TestClient, redis: Redis) -> None:
    schedule_id = a_schedule(live_api)["id"]

    live_api.patch(f"{SCHEDULES}/{schedule_id}", json={"enabled": False})
    assert score(redis, schedule_id) is None
    assert not redis.exists(f"rq:job:{entry_id(schedule_id)}")

    enabled = live_api.patch(f"{SCHEDULES}/{schedule_id}", json={"enabled": True}).json()
    assert score(redis, schedule_id) == to_unix(datetime.fromisoformat(enabled["next_run_at"]))


def test_a_new_cron_moves_the_entry_and_a_rename_keeps_the_next_run(
    live_api: TestClient, redis: Redis
) -> None:
    created = a_schedule(live_api, cron="0 0 1 1 *")

    moved = live_api.patch(f"{SCHEDULES}/{created['id']}", json={"cron": "0 12 * * *"}).json()
    renamed = live_api.patch(f"{SCHEDULES}/{created['id']}", json={"name": "noon"}).json()

    assert moved["next_run_at"] != created["next_run_at"]
    assert renamed["next_run_at"] == moved["next_run_at"] and renamed["name"] == "noon"
    assert score(redis, created["id"]) == to_unix(datetime.fromisoformat(moved["next_run_at"]))


def test_deleting_a_schedule_removes_its_entry(live_api: TestClient, redis: Redis) -> None:
    schedule_id = a_schedule(live_api)["id"]

    assert live_api.delete(f"{SCHEDULES}/{schedule_id}").status_code == 204

    assert score(redis, schedule_id) is None and redis.zcard(ENTRIES_KEY) == 0


def test_run_now_fires_a_job_of_its_own_and_leaves_the_cron_times_alone(
    live_api: TestClient, redis: Redis
) -> None:
    created = a_schedule(live_api, priority="high", enabled=False)

    response = live_api.post(f"{SCHEDULES}/{created['id']}/run")

    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert (job["schedule_id"], job["task"], job["params"], job["queue"]) == (
        created["id"],
        "demo.echo",
        {"n": 1},
        "high",
    )
    assert redis.lrange("rq:queue:high", 0, -1) == [job["id"].encode()]
    after = live_api.get(f"{SCHEDULES}/{created['id']}").json()
    assert after["last_run_at"] == job["created_at"]
    assert (after["next_run_at"], after["enabled"]) == (None, False)


def test_a_schedules_jobs_are_listed_newest_first_a_page_at_a_time(live_api: TestClient) -> None:
    schedule_id = a_schedule(live_api)["id"]
    other_id = a_schedule(live_api, name="other")["id"]
    fired = [live_api.post(f"{SCHEDULES}/{schedule_id}/run").json()["id"] for _ in range(3)]
    live_api.post(f"{SCHEDULES}/{other_id}/run")

    first = live_api.get(f"{SCHEDULES}/{schedule_id}/jobs", params={"limit": 2}).json()
    rest = live_api.get(
        f"{SCHEDULES}/{schedule_id}/jobs", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()

    assert [job["id"] for job in first["items"] + rest["items"]] == fired[::-1]
    assert rest["next_cursor"] is None


def test_the_schedule_list_shows_each_schedules_newest_job(live_api: TestClient) -> None:
    busy_id = a_schedule(live_api)["id"]
    idle_id = a_schedule(live_api, name="idle")["id"]
    fired = [live_api.post(f"{SCHEDULES}/{busy_id}/run").json()["id"] for _ in range(3)]

    listed = {s["id"]: s for s in live_api.get(SCHEDULES).json()["items"]}

    assert (listed[busy_id]["last_job_id"], listed[busy_id]["last_job_status"]) == (fired[-1], "queued")
    assert listed[idle_id]["last_job_id"] is None


def test_run_and_jobs_of_an_unknown_schedule_are_404(live_api: TestClient) -> None:
    for response in (
        live_api.post(f"{SCHEDULES}/nope/run"),
        live_api.get(f"{SCHEDULES}/nope/jobs"),
        live_api.get(f"{SCHEDULES}/not a valid id/jobs"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "schedule_not_found"


def test_health_needs_a_scheduler_only_where_schedules_are_enabled(
    live_api: TestClient, redis: Redis
) -> None:
    redis.sadd("rq:workers", "rq:worker:w1")
    redis.hset("rq:worker:w1", "state", "idle")
    assert live_api.get("/api/v1/health").status_code == 200

    a_schedule(live_api)
    unhealthy = live_api.get("/api/v1/health")
    assert unhealthy.status_code == 503
    assert unhealthy.json()["reasons"] == ["no scheduler running: 1 enabled schedule(s) will not fire"]

    now = time.time()
    redis.hset(
        "rq:scheduler_instance:s1",
        mapping={
            "birth": now,
            "heartbeat": now,
            "last_reconcile_at": now,
            "last_reconcile": "checked 0 rows",
        },
    )
    redis.expire("rq:scheduler_instance:s1", 11)
    redis.hset("rq:scheduler_instance:dead", mapping={"birth": now, "heartbeat": now + 5, "death": now})
    healthy = live_api.get("/api/v1/health")
    assert healthy.status_code == 200, healthy.text
    scheduler = healthy.json()["scheduler"]
    assert scheduler["running"] == 1 and scheduler["last_reconcile"] == "checked 0 rows"
    assert abs(datetime.fromisoformat(scheduler["last_heartbeat_at"]).timestamp() - now) < 0.01


def test_a_change_redis_refuses_is_kept_in_sql_and_written_by_the_next_sync(
    make_settings: Any,
    database_url: str,
    redis: Redis,
    make_client: Any,
) -> None:
    with make_client(make_settings("redis://127.0.0.1:1/0")) as no_redis:
        response = no_redis.post(
            SCHEDULES, json={"name": "n", "task": "demo.echo", "params": {}, "cron": "*/5 * * * *"}
        )
    assert response.status_code == 201, response.text
    created = response.json()

    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        report = sync_entries(session=session, redis=redis, now=utcnow())
    engine.dispose()

    assert report.written == [created["id"]]
    assert score(redis, created["id"]) == to_unix(datetime.fromisoformat(created["next_run_at"]))
