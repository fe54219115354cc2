"""Cancelling and requeueing jobs with real workers: every outcome is exactly one, and SQL agrees with RQ."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus

from backend.queues import cancel_flag_key, queue_for
from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import row, rq_job, submit, wait_for_status

pytestmark = pytest.mark.integration

#: The RQ status that goes with each final SQL status.
FINAL_RQ = {
    "cancelled": {RQStatus.CANCELED, RQStatus.STOPPED},
    "succeeded": {RQStatus.FINISHED},
    "failed": {RQStatus.FAILED},
}


def cancel(api: TestClient, job_id: str) -> Any:
    return api.post(f"/api/v1/jobs/{job_id}/cancel")


def assert_sql_agrees_with_rq(api: TestClient, redis: Redis, job_id: str) -> str:
    final = row(api, job_id)["status"]
    assert final in FINAL_RQ, final
    assert rq_job(redis, job_id).get_status() in FINAL_RQ[final], (job_id, final)
    return str(final)


def test_a_queued_job_is_cancelled_at_once_and_never_runs(
    live_api: TestClient, redis: Redis, workers: WorkerFactory
) -> None:
    job_id = submit(live_api, "demo.echo", {"x": 1})["id"]

    response = cancel(live_api, job_id)

    assert response.status_code == 200
    job = response.json()
    assert (
        job["status"] == "cancelled"
        and job["cancelled_by"].startswith("operator:lanes_")
        and job["cancelled_at"]
    )
    assert rq_job(redis, job_id).get_status() == RQStatus.CANCELED
    assert job_id not in queue_for("normal", redis).job_ids
    behind = submit(live_api, "demo.echo", {"x": 2})["id"]
    workers.start()
    wait_for_status(live_api, behind, "succeeded")
    assert row(live_api, job_id)["status"] == "cancelled" and row(live_api, job_id)["started_at"] is None


def test_a_retrying_job_is_cancelled_and_leaves_the_retry_schedule(
    api_factory: Callable[..., TestClient], redis: Redis, workers: WorkerFactory
) -> None:
    api = api_factory(retry_base_s=60)  # the retry would come back in a minute
    job_id = submit(api, "demo.flaky", {"failures": 5}, max_retries=3)["id"]
    workers.start()
    wait_for_status(api, job_id, "retrying")

    response = cancel(api, job_id)

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert job_id not in queue_for("normal", redis).scheduled_job_registry.get_job_ids()
    assert rq_job(redis, job_id).get_status() == RQStatus.CANCELED


def test_a_running_job_is_stopped_and_stays_cancelled(
    live_api: TestClient, redis: Redis, workers: WorkerFactory
) -> None:
    workers.start()
    job_id = submit(live_api, "demo.sleep", {"seconds": 30, "steps": 30})["id"]
    wait_for_status(live_api, job_id, "started")

    response = cancel(live_api, job_id)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["cancelled_by"].startswith(
        "operator:lanes_"
    )
    assert rq_job(redis, job_id).get_status() == RQStatus.STOPPED
    next_job = submit(live_api, "demo.echo", {})["id"]  # the worker goes on working
    wait_for_status(live_api, next_job, "succeeded")
    assert row(live_api, job_id)["status"] == "cancelled"


def test_cancelling_a_finished_job_is_409_with_its_status(
    live_api: TestClient, workers: WorkerFactory
) -> None:
    workers.start()
    job_id = submit(live_api, "demo.echo", {})["id"]
    wait_for_status(live_api, job_id, "succeeded")

    response = cancel(live_api, job_id)

    assert response.status_code == 409
    assert response.json()["code"] == "job_finished"
    assert response.json()["detail"]["status"] == "succeeded"


def test_cancels_racing_jobs_as_they_start_and_finish_each_have_exactly_one_outcome(
    live_api: TestClient, redis: Redis, workers: WorkerFactory
) -> None:
    ids = [submit(live_api, "demo.sleep", {"seconds": 0.05, "steps": 1})["id"] for _ in range(24)]
    workers.start()
    workers.start()
    rng = random.Random(7)
    answers: dict[str, int] = {}
    for job_id in ids:
        wait_for(lambda: rng.random() < 0.5, interval_s=0.01, timeout_s=5)  # land cancels at varied moments
        answers[job_id] = cancel(live_api, job_id).status_code

    wait_for(lambda: all(row(live_api, i)["status"] in FINAL_RQ for i in ids), timeout_s=30)
    outcomes = {job_id: assert_sql_agrees_with_rq(live_api, redis, job_id) for job_id in ids}
    for job_id, status in outcomes.items():
        if answers[job_id] == 409:
            assert status == "succeeded", job_id  # it had finished: the cancel said so
        if answers[job_id] == 200:
            assert status == "cancelled", job_id
    assert set(outcomes.values()) <= {"cancelled", "succeeded"}


def test_a_failed_job_runs_again_under_the_same_id_with_attempts_continuing(
    live_api: TestClient, redis: Redis, workers: WorkerFactory
) -> None:
    workers.start()
    job_id = submit(live_api, "demo.flaky", {"failures": 1}, max_retries=0)["id"]
    failed = wait_for_status(live_api, job_id, "failed")
    assert failed["attempts"] == 1
    assert job_id in queue_for("normal", redis).failed_job_registry.get_job_ids()

    response = live_api.post(f"/api/v1/jobs/{job_id}/retry")

    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert response.json()["error"] is None
    done = wait_for_status(live_api, job_id, "succeeded")
    assert done["attempts"] == 2 and done["result"] == {"succeeded_on_attempt": 2}
    assert job_id not in queue_for("normal", redis).failed_job_registry.get_job_ids()
    assert rq_job(redis, job_id).get_status() == RQStatus.FINISHED


def test_a_cancelled_job_can_be_retried_and_then_runs(live_api: TestClient, workers: WorkerFactory) -> None:
    job_id = submit(live_api, "demo.echo", {"again": True})["id"]
    assert cancel(live_api, job_id).status_code == 200

    assert live_api.post(f"/api/v1/jobs/{job_id}/retry").status_code == 202
    workers.start()

    done = wait_for_status(live_api, job_id, "succeeded")
    assert done["result"] == {"again": True} and done["cancelled_at"] is None


@pytest.mark.parametrize(
    ("path", "status", "code"), [("retry", 409, "not_requeueable"), ("cancel", 404, None)]
)
def test_retry_of_a_live_job_is_409_and_unknown_ids_are_404(
    live_api: TestClient, path: str, status: int, code: str | None
) -> None:
    job_id = submit(live_api, "demo.echo", {})["id"] if status == 409 else "no-such-job"

    response = live_api.post(f"/api/v1/jobs/{job_id}/{path}")

    assert response.status_code == status
    assert response.json()["code"] == (code or "job_not_found")


def test_bulk_cancel_reports_what_was_cancelled_and_why_the_rest_was_not(
    live_api: TestClient, workers: WorkerFactory
) -> None:
    workers.start()
    done = submit(live_api, "demo.echo", {})["id"]
    wait_for_status(live_api, done, "succeeded")
    workers.stop_all()
    waiting = [submit(live_api, "demo.echo", {"n": n}, priority="low")["id"] for n in range(3)]

    by_ids = live_api.post("/api/v1/jobs/cancel", json={"ids": [waiting[0], done, "ghost"]}).json()
    by_filter = live_api.post("/api/v1/jobs/cancel", json={"priority": "low"}).json()

    assert by_ids["cancelled"] == [waiting[0]]
    assert {(r["id"], r["reason"]) for r in by_ids["not_cancelled"]} == {
        (done, "already ended"),
        ("ghost", "not found"),
    }
    assert sorted(by_filter["cancelled"]) == sorted(waiting[1:])
    assert all(row(live_api, i)["status"] == "cancelled" for i in waiting)


def test_bulk_retry_drains_the_dead_letter_on_purpose(live_api: TestClient, workers: WorkerFactory) -> None:
    workers.start()
    failed = [submit(live_api, "demo.flaky", {"failures": 1}, max_retries=0)["id"] for _ in range(3)]
    for job_id in failed:
        wait_for_status(live_api, job_id, "failed")

    report = live_api.post("/api/v1/jobs/retry", json={"status": "failed", "task": "demo.flaky"}).json()

    assert sorted(report["requeued"]) == sorted(failed) and report["not_requeued"] == []
    for job_id in failed:
        assert wait_for_status(live_api, job_id, "succeeded")["attempts"] == 2


def test_two_concurrent_cancels_of_one_running_job_agree(
    live_api: TestClient, redis: Redis, workers: WorkerFactory
) -> None:
    workers.start()
    job_id = submit(live_api, "demo.sleep", {"seconds": 20, "steps": 20})["id"]
    wait_for_status(live_api, job_id, "started")
    codes: list[int] = []

    threads = [
        threading.Thread(target=lambda: codes.append(cancel(live_api, job_id).status_code)) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(codes) in ([200, 200], [200, 409])
    assert assert_sql_agrees_with_rq(live_api, redis, job_id) == "cancelled"


def test_a_worker_never_starts_a_job_whose_cancel_is_under_way(
    live_api: TestClient, redis: Redis, workers: WorkerFactory
) -> None:
    # The moment between a cancel setting the job's flag and cancelling it in RQ, frozen: the
    # worker's claim must refuse the job, and the cancel then completes as if nothing happened.
    job_id = submit(live_api, "demo.echo", {"x": 1})["id"]
    redis.set(cancel_flag_key(job_id), "api")
    after = submit(live_api, "demo.echo", {"x": 2})["id"]

    workers.start()
    wait_for_status(live_api, after, "succeeded")

    assert row(live_api, job_id)["started_at"] is None
    assert rq_job(redis, job_id).get_status() == RQStatus.QUEUED  # untouched, off the queue
    assert cancel(live_api, job_id).status_code == 200
    assert assert_sql_agrees_with_rq(live_api, redis, job_id) == "cancelled"
