"""The simple (non-forking) worker and the worker pool, as a user runs them: real processes, a
private redis-server, both databases; what is asserted is what a user would look at (rows,
RQ's record, the metrics, the processes)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus

from backend.metrics import COUNTERS_KEY
from backend.queues import alive_key
from backend.reconcile import WORKER_DIED
from tests.helpers import SchedulerFactory, WorkerFactory, wait_for
from tests.integration import reconcile_tasks
from tests.integration import test_cancel_and_retry as cancel_stories
from tests.integration.support import row, rq_job, running, submit, wait_for_status

pytestmark = pytest.mark.integration

SIMPLE = {"worker_mode": "simple", "task_modules": reconcile_tasks.MODULE}


def worker_pids(redis: Redis, names: list[str]) -> dict[str, int]:
    return {name: int(redis.hget(f"rq:worker:{name}", "pid") or 0) for name in names}


def test_a_simple_worker_runs_every_job_in_its_own_process_and_every_row_and_counter_follows(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, redis: Redis
) -> None:
    api = api_factory(retry_base_s=1)
    worker = workers.start(**SIMPLE)
    ids = [submit(api, "demo.echo", {"message": f"m{i}"})["id"] for i in range(30)]
    flaky = submit(api, "demo.flaky", {"failures": 1}, max_retries=2)["id"]
    doomed = submit(api, "demo.fail", {"message": "no such luck"})["id"]

    done = [wait_for_status(api, job_id, "succeeded") for job_id in ids]
    assert {r["worker"] for r in done} == {worker.name}
    assert [r["result"]["message"] for r in done] == [f"m{i}" for i in range(30)]
    assert [r["progress"] for r in done] == [100] * 30
    assert wait_for_status(api, flaky, "succeeded")["attempts"] == 2
    failed = wait_for_status(api, doomed, "failed")
    assert "no such luck" in failed["error"]
    # No work-horse: the job ran in the worker's own process.
    assert rq_job(redis, ids[0]).worker_name == worker.name
    assert len({int(redis.hget(f"rq:worker:{worker.name}", "pid") or 0)}) == 1

    worker.stop()  # the write-behind hands over what it holds, metrics included, before the exit

    assert worker.process.returncode == 0
    succeeded = int(redis.hget(COUNTERS_KEY, "lanes_jobs_succeeded|task=demo.echo") or 0)
    assert succeeded == 30
    assert int(redis.hget(COUNTERS_KEY, "lanes_jobs_retried|task=demo.flaky") or 0) == 1
    assert int(redis.hget(COUNTERS_KEY, "lanes_job_wait_seconds_count|queue=normal") or 0) >= 31


def test_a_running_job_of_a_simple_worker_is_stopped_by_a_cancel_and_the_worker_goes_on(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, redis: Redis
) -> None:
    api = api_factory()
    worker = workers.start(**SIMPLE)
    job_id = submit(api, "demo.sleep", {"seconds": 60, "steps": 60})["id"]
    wait_for_status(api, job_id, "started")

    response = api.post(f"/api/v1/jobs/{job_id}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert rq_job(redis, job_id).get_status() == RQStatus.STOPPED
    assert worker.process.poll() is None
    next_job = submit(api, "demo.echo", {})["id"]
    assert wait_for_status(api, next_job, "succeeded")["worker"] == worker.name
    assert row(api, job_id)["status"] == "cancelled"


def test_a_simple_worker_ends_a_job_at_its_timeout_and_takes_the_next(
    api_factory: Callable[..., TestClient], workers: WorkerFactory
) -> None:
    api = api_factory()
    workers.start(**SIMPLE)
    job_id = submit(api, "demo.sleep", {"seconds": 30, "steps": 1}, timeout_s=1, max_retries=0)["id"]

    failed = wait_for_status(api, job_id, "failed", timeout_s=15)

    assert failed["error"] == "timed out after 1 s"
    assert wait_for_status(api, submit(api, "demo.echo", {})["id"], "succeeded")


def test_a_pool_runs_jobs_side_by_side_and_sigterm_lets_each_process_finish_its_job(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, redis: Redis
) -> None:
    api = api_factory()
    pool = workers.start(processes=2, **SIMPLE)
    names = [f"{pool.name}-1", f"{pool.name}-2"]
    pids = worker_pids(redis, names)
    assert len(set(pids.values())) == 2 and pool.process.pid not in pids.values()
    jobs = [submit(api, "demo.sleep", {"seconds": 3, "steps": 3})["id"] for _ in range(2)]
    started = [wait_for_status(api, job_id, "started") for job_id in jobs]
    assert {r["worker"] for r in started} == set(names)  # one job each, at the same time

    pool.signal(signal.SIGTERM)

    assert pool.wait(timeout_s=30) == 0
    assert [row(api, job_id)["status"] for job_id in jobs] == ["succeeded", "succeeded"]
    assert not any(running(pid) for pid in pids.values())
    registered = {member.decode() for member in redis.smembers("rq:workers")}
    assert not registered & set(names)  # each said goodbye to RQ


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_job_that_kills_its_simple_worker_is_retried_and_the_pool_starts_a_new_process(
    api_factory: Callable[..., TestClient],
    workers: WorkerFactory,
    schedulers: SchedulerFactory,
    redis: Redis,
) -> None:
    api = api_factory(retry_base_s=1, task_modules=reconcile_tasks.MODULE)
    # Only the quick pass for dead workers' jobs may hand the job on: the full reconcile runs once,
    # at the start. The job's row still says queued: its `started` was waiting in the write-behind.
    schedulers.start(reconcile_grace_s=5, reconcile_interval_s=3600, task_modules=reconcile_tasks.MODULE)
    pool = workers.start(processes=2, **SIMPLE)
    first = worker_pids(redis, [f"{pool.name}-1", f"{pool.name}-2"])

    job_id = submit(api, "tests.die_on_first_attempt", max_retries=1)["id"]

    # The pool drops the dead process's liveness key at once (it would lapse three beats, 15 s,
    # after the last), so the reconciler's next sweep hands the job on.
    dead_name = wait_for(
        lambda: next((name for name, pid in first.items() if not running(pid)), None),
        timeout_s=60,
        message="the job to take its process down",
    )
    wait_for(lambda: not redis.exists(alive_key(dead_name)), timeout_s=3, message="the liveness key to go")
    retried = wait_for_status(api, job_id, "retrying", "succeeded", timeout_s=120)
    assert retried["status"] == "succeeded" or retried["error"] == WORKER_DIED
    final = wait_for_status(api, job_id, "succeeded", timeout_s=60)
    assert final["attempts"] == 2
    # The process the job took down was replaced under a new name; the pool itself lives on.
    dead = [pid for pid in first.values() if not running(pid)]
    assert len(dead) == 1
    assert final["result"]["pid"] not in dead
    replacement = wait_for(
        lambda: [k.decode() for k in redis.keys(f"rq:worker:{pool.name}-*.1")],
        timeout_s=10,
        message="a new one",
    )
    assert len(replacement) == 1 and pool.process.poll() is None
    assert os.getpid() != final["result"]["pid"]


@pytest.mark.parametrize(
    "story",
    [
        cancel_stories.test_cancels_racing_jobs_as_they_start_and_finish_each_have_exactly_one_outcome,
        cancel_stories.test_two_concurrent_cancels_of_one_running_job_agree,
        cancel_stories.test_a_worker_never_starts_a_job_whose_cancel_is_under_way,
    ],
    ids=["racing", "concurrent", "under-way"],
)
def test_the_cancel_stories_hold_for_simple_workers_too(
    story: Callable[..., None], live_api: TestClient, redis: Redis, workers: WorkerFactory
) -> None:
    workers.settings["worker_mode"] = "simple"  # every worker the story starts is a simple one
    story(live_api, redis, workers)
