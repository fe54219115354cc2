"""The submit controls with real workers: delays, dependencies, timeouts and batches."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus

from backend.db import utcnow
from backend.queues import queue_for
from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import row, rq_job, stamp, submit, wait_for_status

pytestmark = pytest.mark.integration


def test_a_delayed_job_stays_scheduled_until_its_time_then_runs(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    workers.start()
    job = submit(live_api, "demo.echo", {"n": 1}, delay_s=1)
    run_at = stamp(job["run_at"])
    assert job["status"] == "scheduled"
    assert job["id"] in queue_for("normal", redis).scheduled_job_registry

    seen: list[tuple[datetime, str]] = []  # (when, status) as the API answered

    def ran() -> dict[str, Any] | None:
        current = row(live_api, job["id"])
        seen.append((utcnow(), current["status"]))
        return current if current["status"] == "succeeded" else None

    final = wait_for(ran, timeout_s=15, message="the delayed job to run")

    assert stamp(final["started_at"]) >= run_at
    early = [status for when, status in seen if when < run_at]
    assert early and set(early) == {"scheduled"}
    assert final["run_at"] == job["run_at"]
    assert rq_job(redis, job["id"]).get_status() == RQStatus.FINISHED


def test_a_chain_of_three_dependent_jobs_runs_in_order(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    first = submit(live_api, "demo.sleep", {"seconds": 0.5, "steps": 1})["id"]
    second = submit(live_api, "demo.sleep", {"seconds": 0.2, "steps": 1}, depends_on=[first])["id"]
    third = submit(live_api, "demo.echo", {"last": True}, depends_on=[second])["id"]
    assert [row(live_api, job_id)["status"] for job_id in (first, second, third)] == [
        "queued",
        "scheduled",
        "scheduled",
    ]
    assert rq_job(redis, third).get_status() == RQStatus.DEFERRED

    # Two workers: a free worker could take a job early, if anything let it.
    for worker in [workers.start(wait_ready=False) for _ in range(2)]:
        workers.wait_ready(worker)

    final = {
        job_id: wait_for_status(live_api, job_id, "succeeded", timeout_s=20)
        for job_id in (first, second, third)
    }

    assert stamp(final[first]["finished_at"]) <= stamp(final[second]["started_at"])
    assert stamp(final[second]["finished_at"]) <= stamp(final[third]["started_at"])
    assert final[third]["depends_on"] == [second]
    assert final[third]["result"] == {"last": True}


def test_a_failing_parent_cancels_its_dependents_transitively_in_sql_and_rq(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    parent = submit(live_api, "demo.fail", {"message": "parent broke"}, max_retries=0)["id"]
    child = submit(live_api, "demo.echo", depends_on=[parent])["id"]
    grandchild = submit(live_api, "demo.echo", depends_on=[child])["id"]
    workers.start()

    final = wait_for_status(live_api, grandchild, "cancelled", timeout_s=20)

    assert row(live_api, parent)["status"] == "failed"
    middle = row(live_api, child)
    assert middle["status"] == "cancelled" and middle["cancelled_by"] == "dependency"
    assert middle["error"] == f"dependency {parent} failed: backend.tasks.demo.DemoFailure: parent broke"
    assert final["cancelled_by"] == "dependency"
    assert final["error"].startswith(f"dependency {child} was cancelled because dependency {parent} failed")
    for job_id in (child, grandchild):
        current = row(live_api, job_id)
        assert current["started_at"] is None and current["attempts"] == 0  # never ran
        assert rq_job(redis, job_id).get_status() == RQStatus.CANCELED
        assert job_id in queue_for("normal", redis).canceled_job_registry
        assert job_id not in queue_for("normal", redis).deferred_job_registry


def test_a_job_killed_by_its_timeout_is_recorded_as_timed_out_and_retried(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    job_id = submit(live_api, "demo.sleep", {"seconds": 30, "steps": 30}, timeout_s=1, max_retries=1)["id"]
    workers.start()
    retrying: list[dict[str, Any]] = []

    def failed() -> dict[str, Any] | None:
        current = row(live_api, job_id)
        if current["status"] == "retrying" and not retrying:
            retrying.append(current)
        return current if current["status"] == "failed" else None

    final = wait_for(failed, timeout_s=20, message="the job to time out twice")

    assert retrying and retrying[0]["error"] == "timed out after 1 s" and retrying[0]["attempts"] == 1
    assert final["attempts"] == 2
    assert final["error"] == "timed out after 1 s"
    assert "JobTimeoutException" in final["traceback"]
    assert final["timeout_s"] == 1
    assert stamp(final["finished_at"]) - stamp(final["started_at"]) < timedelta(seconds=10)
    assert rq_job(redis, job_id).get_status() == RQStatus.FAILED


def test_a_batch_lands_in_one_go(
    api_factory: Callable[..., TestClient], redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    api = api_factory()
    items: list[dict[str, Any]] = [{"task": "demo.echo", "params": {"n": n}} for n in range(20)]
    items += [
        {"task": "demo.sleep", "params": {"seconds": 0.2, "steps": 1}},
        {"task": "demo.echo", "params": {"after": 20}, "depends_on_items": [20]},
    ]
    redis.config_resetstat()

    response = api.post("/api/v1/jobs/batch", json={"jobs": items})

    assert response.status_code == 202, response.text
    stats = redis.info("commandstats")
    assert stats["cmdstat_exec"]["calls"] == 1 and stats["cmdstat_multi"]["calls"] == 1
    jobs = response.json()["jobs"]
    assert queue_for("normal", redis).job_ids == [job["id"] for job in jobs[:21]]
    assert jobs[21]["status"] == "scheduled" and jobs[21]["depends_on"] == [jobs[20]["id"]]

    workers.start()

    def all_done() -> list[dict[str, Any]] | None:
        found = [row(api, job["id"]) for job in jobs]
        return found if all(r["status"] == "succeeded" for r in found) else None

    rows = wait_for(all_done, timeout_s=30, message="every job of the batch to succeed")
    assert [r["result"] for r in rows[:20]] == [{"n": n} for n in range(20)]
    assert stamp(rows[20]["finished_at"]) <= stamp(rows[21]["started_at"])
