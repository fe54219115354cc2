"""The JSON behind the dashboard, against real workers on the private redis-server and both databases:
queues as RQ and SQL count them, throughput and percentiles, the workers, and a detailed health."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.enums import Plan, Role
from tests.conftest import tenant_key
from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import submit, wait_for_status

pytestmark = pytest.mark.integration


def test_queue_counts_from_rq_and_sql_agree_and_members_see_only_their_own(
    live_api: TestClient, workers: WorkerFactory, database_url: str
) -> None:
    done = [submit(live_api, "demo.echo", {"n": n}) for n in range(3)]
    failed = submit(live_api, "demo.fail", {}, max_retries=0)
    later = [submit(live_api, "demo.echo", {}, delay_s=3600) for _ in range(2)]
    workers.start()
    for job in done:
        wait_for_status(live_api, job["id"], "succeeded")
    wait_for_status(live_api, failed["id"], "failed")

    body = live_api.get("/api/v1/queues").json()
    member = {"Authorization": f"Bearer {tenant_key(database_url, 'alice', role=Role.MEMBER, plan=Plan.PRO)}"}
    mine = live_api.get("/api/v1/queues", headers=member).json()

    queues = {q["name"]: q for q in body["queues"]}
    assert list(queues) == ["high", "normal", "low", "webhooks"]
    assert queues["normal"]["rq"]["finished"] == 3 and queues["normal"]["rq"]["scheduled"] == 2
    assert queues["normal"]["sql"]["succeeded"] == 3 and queues["normal"]["sql"]["scheduled"] == 2
    assert queues["low"]["rq"]["failed"] == 1 and queues["low"]["sql"]["failed"] == 1
    assert queues["normal"]["rq"]["queued"] == 0 == queues["normal"]["sql"]["queued"]
    assert body["workers"] == 1
    assert all(q["rq"] is None for q in mine["queues"])  # RQ's counts span tenants: admins only
    assert all(sum((q["sql"] or {}).values()) == 0 for q in mine["queues"])
    assert later  # two scheduled jobs counted above


def test_stats_count_throughput_and_time_percentiles_of_what_finished(
    live_api: TestClient, workers: WorkerFactory
) -> None:
    jobs = [submit(live_api, "demo.sleep", {"seconds": 0.2, "steps": 1}) for _ in range(4)]
    failed = submit(live_api, "demo.fail", {}, max_retries=0)
    workers.start()
    for job in jobs:
        wait_for_status(live_api, job["id"], "succeeded")
    wait_for_status(live_api, failed["id"], "failed")

    stats = live_api.get("/api/v1/queues/stats", params={"window_s": 600, "bucket_s": 60}).json()

    normal, low = stats["queues"]["normal"], stats["queues"]["low"]
    assert (normal["succeeded"], normal["failed"], low["failed"]) == (4, 0, 1)
    assert sum(point["succeeded"] for point in normal["throughput"]) == 4
    assert len(normal["throughput"]) == 10 and stats["sampled"] == 5
    assert normal["run_s"]["count"] == 4 and 0.2 <= normal["run_s"]["p50"] <= normal["run_s"]["p95"] < 5
    assert normal["wait_s"]["count"] == 4 and 0 <= normal["wait_s"]["p50"] <= normal["wait_s"]["p95"]
    assert stats["queues"]["high"]["run_s"] == {"p50": None, "p95": None, "count": 0}


def test_workers_show_their_state_and_the_job_they_run_to_admins_only(
    live_api: TestClient, workers: WorkerFactory, database_url: str
) -> None:
    worker = workers.start(name="w-observed")
    job = submit(live_api, "demo.sleep", {"seconds": 3, "steps": 3})
    wait_for_status(live_api, job["id"], "started")

    def busy() -> Any:
        found = {w["name"]: w for w in live_api.get("/api/v1/workers").json()}
        return found.get("w-observed", {}).get("state") == "busy" and found["w-observed"]

    seen = wait_for(busy, timeout_s=20, message="the worker to be busy")
    member = {"Authorization": f"Bearer {tenant_key(database_url, 'alice', role=Role.MEMBER, plan=Plan.PRO)}"}
    refused = live_api.get("/api/v1/workers", headers=member)

    assert seen["pid"] == worker.pid and seen["queues"] == ["high", "webhooks", "normal", "low"]
    assert seen["current_job"] == job["id"] and seen["current_job_elapsed_s"] >= 0
    assert seen["hostname"] and seen["last_heartbeat_at"] and seen["birth_at"]
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    wait_for_status(live_api, job["id"], "succeeded")
    after = wait_for(
        lambda: (w := live_api.get("/api/v1/workers").json()[0])["state"] == "idle" and w,
        message="the worker to be idle again",
    )
    assert after["successful_jobs"] == 1 and after["current_job"] is None


def test_health_reports_redis_latency_and_memory_and_is_degraded_while_a_job_waits_too_long(
    api_factory: Any, workers: WorkerFactory
) -> None:
    api = api_factory(health_queue_age_s=1)
    workers.start("high")  # nobody takes `normal`
    job = submit(api, "demo.echo", {})

    degraded = wait_for(
        lambda: (r := api.get("/api/v1/health")).json()["status"] == "degraded" and r,
        timeout_s=20,
        message="health to be degraded",
    )

    body = degraded.json()
    assert degraded.status_code == 200 and body["reasons"] == []
    assert "oldest queued job has waited" in body["warnings"][0] and body["oldest_queued_age_s"] > 1
    assert body["redis_memory_bytes"] > 0 and 0 <= body["redis_latency_ms"] < 1000
    workers.start("normal")
    wait_for_status(api, job["id"], "succeeded")
    assert api.get("/api/v1/health").json()["status"] == "healthy"


def test_a_paused_queue_is_skipped_by_workers_until_it_is_resumed_and_submits_still_go_in(
    live_api: TestClient, workers: WorkerFactory, redis: Any, database_url: str
) -> None:
    worker = workers.start(worker_poll_s=1)
    key = f"rq:worker:{worker.name}"

    def two_polls() -> None:
        for _ in range(2):  # the worker reads the paused queues at every poll, between heartbeats
            seen = redis.hget(key, "last_heartbeat")
            wait_for(
                lambda seen=seen: redis.hget(key, "last_heartbeat") != seen,
                timeout_s=20,
                message="a heartbeat",
            )

    assert live_api.post("/api/v1/queues/normal/pause").json() == {"name": "normal", "paused": True}
    two_polls()
    waiting = submit(live_api, "demo.echo", {"n": 1})
    urgent = submit(live_api, "demo.echo", {"n": 2}, priority="high")
    wait_for_status(live_api, urgent["id"], "succeeded")
    two_polls()  # and still the paused job waits
    paused = {q["name"]: q for q in live_api.get("/api/v1/queues").json()["queues"]}["normal"]
    member = {"Authorization": f"Bearer {tenant_key(database_url, 'alice', role=Role.ADMIN, plan=Plan.PRO)}"}
    refused = live_api.post("/api/v1/queues/normal/resume", headers=member)

    assert paused["paused"] is True and paused["rq"]["queued"] == 1
    assert live_api.get(f"/api/v1/jobs/{waiting['id']}").json()["status"] == "queued"
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert live_api.post("/api/v1/queues/normal/resume").json()["paused"] is False
    wait_for_status(live_api, waiting["id"], "succeeded")
    assert live_api.post("/api/v1/queues/nope/pause").status_code == 404


def test_emptying_a_queue_cancels_its_jobs_in_redis_and_sql(live_api: TestClient, redis: Any) -> None:
    jobs = [submit(live_api, "demo.echo", {"n": n}) for n in range(3)]
    other = submit(live_api, "demo.echo", {}, priority="high")

    report = live_api.post("/api/v1/queues/normal/empty")

    assert report.status_code == 200, report.text
    assert sorted(report.json()["cancelled"]) == sorted(job["id"] for job in jobs)
    assert redis.llen("rq:queue:normal") == 0 and redis.llen("rq:queue:high") == 1
    for job in jobs:
        row = live_api.get(f"/api/v1/jobs/{job['id']}").json()
        assert row["status"] == "cancelled" and row["cancelled_by"].startswith("operator:")
    assert live_api.get(f"/api/v1/jobs/{other['id']}").json()["status"] == "queued"
    webhooks = live_api.post("/api/v1/queues/webhooks/empty")
    assert (webhooks.status_code, webhooks.json()["code"]) == (422, "not_a_job_queue")
