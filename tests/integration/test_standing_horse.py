"""A forking worker's standing horse (LANES_HORSE_JOBS): one work-horse runs job after job, and
everything that ends a horse still ends it. Real worker processes on a private redis-server, both
databases; what is asserted is what a user would look at (rows, RQ's record, the processes)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus

from tests.helpers import WorkerFactory, wait_for
from tests.integration import horse_tasks, reconcile_tasks
from tests.integration.support import horse_of, row, rq_job, running, submit, wait_for_status

pytestmark = pytest.mark.integration

TASKS = {"task_modules": f"{reconcile_tasks.MODULE},{horse_tasks.MODULE}"}


def pid_of_a_job(api: TestClient) -> int:
    """Run a `tests.whose_pid` job to its end; the pid of the process that ran it."""
    done = wait_for_status(api, submit(api, "tests.whose_pid")["id"], "succeeded", timeout_s=15)
    pid: int = done["result"]["pid"]
    return pid


def test_a_horse_runs_its_count_of_jobs_then_a_new_horse_takes_over_and_every_row_and_stat_is_right(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, redis: Redis
) -> None:
    api = api_factory(**TASKS)
    worker = workers.start(horse_jobs=3, **TASKS)
    ids = [submit(api, "tests.whose_pid")["id"] for _ in range(7)]
    timed_out = submit(api, "demo.sleep", {"seconds": 30, "steps": 1}, timeout_s=1, max_retries=0)["id"]

    done = [wait_for_status(api, job_id, "succeeded", timeout_s=20) for job_id in ids]
    pids = [r["result"]["pid"] for r in done]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    assert worker.pid not in pids  # each ran in a horse, not in the worker
    assert {r["worker"] for r in done} == {worker.name}
    assert all(r["started_at"] and r["finished_at"] and r["attempts"] == 1 for r in done)
    # A job's timeout ends the job, not its horse: the horse of the seventh job runs the next.
    failed = wait_for_status(api, timed_out, "failed", timeout_s=15)
    assert failed["error"] == "timed out after 1 s"
    assert pid_of_a_job(api) == pids[6]
    stats = redis.hgetall(f"rq:worker:{worker.name}")
    assert int(stats[b"successful_job_count"]) == 8
    assert int(stats[b"failed_job_count"]) == 1
    assert float(stats[b"total_working_time"]) > 1.0
    assert not redis.smembers(f"rq:worker:{worker.name}:executions")  # no execution left open
    assert stats.get(b"current_job") in (None, b"")


def test_a_crash_on_a_reused_horse_retries_the_job_at_once_and_the_next_job_gets_a_new_horse(
    api_factory: Callable[..., TestClient], workers: WorkerFactory
) -> None:
    api = api_factory(retry_base_s=1, **TASKS)
    worker = workers.start(**TASKS)  # the default count
    first = pid_of_a_job(api)
    assert pid_of_a_job(api) == first  # the horse stands

    job_id = submit(api, "tests.die_on_first_attempt", max_retries=1)["id"]  # SIGKILLs its horse

    # The worker sees its horse die and retries the job itself: no sweep, no wait on heartbeats.
    retried = wait_for_status(api, job_id, "retrying", "succeeded", timeout_s=3)
    assert retried["attempts"] == 1 or retried["status"] == "succeeded"
    if retried["status"] == "retrying":
        assert "terminated unexpectedly" in retried["error"] and "signal 9" in retried["error"]
    final = wait_for_status(api, job_id, "succeeded", timeout_s=30)
    assert (final["attempts"], final["result"]["attempt"]) == (2, 2)
    assert not running(first)
    assert final["result"]["pid"] != first
    assert pid_of_a_job(api) == final["result"]["pid"]  # the new horse stands in turn
    assert worker.process.poll() is None


def test_a_cancel_kills_a_reused_horse_and_the_worker_goes_on_with_a_new_one(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, redis: Redis
) -> None:
    api = api_factory(**TASKS)
    worker = workers.start(**TASKS)
    first = pid_of_a_job(api)
    job_id = submit(api, "demo.sleep", {"seconds": 60, "steps": 60})["id"]
    wait_for_status(api, job_id, "started")
    assert horse_of(worker) == first  # the long job runs in the horse that ran the last

    response = api.post(f"/api/v1/jobs/{job_id}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert rq_job(redis, job_id).get_status() == RQStatus.STOPPED
    wait_for(lambda: not running(first), timeout_s=5, message="the cancelled job's horse to die")
    assert worker.process.poll() is None
    assert pid_of_a_job(api) not in (first, worker.pid)
    assert row(api, job_id)["status"] == "cancelled"


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
def test_a_warm_stop_ends_the_standing_horse_too(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, busy: bool
) -> None:
    api = api_factory(**TASKS)
    worker = workers.start(**TASKS)
    horse = pid_of_a_job(api)
    job_id = submit(api, "demo.sleep", {"seconds": 2, "steps": 2})["id"] if busy else None
    if job_id:
        wait_for_status(api, job_id, "started")

    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout_s=20) == 0
    if job_id:
        assert row(api, job_id)["status"] == "succeeded"  # the running job was let finish
    assert not running(horse)
