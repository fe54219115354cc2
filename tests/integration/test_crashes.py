"""Workers die badly and nothing is lost: killed with their horse, the horse alone, the parent
alone, or stopped while a job outlives the shutdown grace. Real workers, a real scheduler (its
dead-worker sweep) and a private redis-server; the job's row is what a user would look at."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus

from backend.reconcile import WORKER_DIED
from tests.helpers import SchedulerFactory, WorkerFactory, wait_for
from tests.integration import reconcile_tasks
from tests.integration.support import (
    horse_of,
    kill_worker_and_horse,
    row,
    rq_job,
    running,
    submit,
    wait_for_status,
)

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

TASKS = {"task_modules": reconcile_tasks.MODULE}
#: The issue's bound: a dead worker's job is retried (or failed) within two minutes.
DEAD_WORKER_DEADLINE_S = 120
#: Rows younger than this are left alone by the sweep (30 s by default); the test's job is killed
#: seconds after it starts, so a short grace keeps the test short without changing the mechanism.
GRACE = {"reconcile_grace_s": 5}
#: The two stories that wait on the sweep (about 20 s each) run on the production database only.
ON_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@ON_POSTGRESQL
def test_a_worker_killed_with_its_horse_has_its_job_retried_by_the_sweep_and_its_children_die_too(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, schedulers: SchedulerFactory
) -> None:
    api = api_factory(retry_base_s=1, **TASKS)
    schedulers.start(**GRACE, **TASKS)  # default heartbeat (5 s) and sweep (every 10 s)
    job_id = submit(api, "tests.sleep_on_first_attempt", {"seconds": 300}, max_retries=1)["id"]
    victim = workers.start(**TASKS)
    wait_for_status(api, job_id, "started")

    others = kill_worker_and_horse(victim)
    killed = time.monotonic()

    # RQ's scheduler process, forked by the worker, does not live on as an orphan.
    assert others
    wait_for(
        lambda: not any(running(pid) for pid in others), timeout_s=5, message="the worker's children to die"
    )
    retrying = wait_for_status(api, job_id, "retrying", timeout_s=DEAD_WORKER_DEADLINE_S)
    noticed_s = time.monotonic() - killed
    assert (retrying["attempts"], retrying["error"]) == (1, WORKER_DIED)

    workers.start(**TASKS)
    final = wait_for_status(api, job_id, "succeeded", timeout_s=30)
    assert (final["attempts"], final["result"]) == (2, {"attempt": 2})
    log.info("worker and horse SIGKILLed: the row said retrying %.1f s later", noticed_s)


@ON_POSTGRESQL
def test_a_worker_parent_killed_alone_takes_its_horse_along_so_the_job_never_runs_twice(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, schedulers: SchedulerFactory
) -> None:
    api = api_factory(retry_base_s=1, **TASKS)
    schedulers.start(**GRACE, **TASKS)
    job_id = submit(api, "tests.sleep_on_first_attempt", {"seconds": 300}, max_retries=1)["id"]
    victim = workers.start(**TASKS)
    wait_for_status(api, job_id, "started")
    horse = horse_of(victim)

    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()

    wait_for(lambda: not running(horse), timeout_s=5, message="the orphaned work-horse to die")
    wait_for_status(api, job_id, "retrying", timeout_s=DEAD_WORKER_DEADLINE_S)
    workers.start(**TASKS)
    final = wait_for_status(api, job_id, "succeeded", timeout_s=30)
    assert (final["attempts"], final["result"]) == (2, {"attempt": 2})


def test_a_killed_horse_is_retried_at_once_and_a_job_that_always_kills_it_fails_after_its_retries(
    api_factory: Callable[..., TestClient], workers: WorkerFactory
) -> None:
    api = api_factory(retry_base_s=1, **TASKS)
    worker = workers.start(**TASKS)
    job_id = submit(api, "tests.sleep_on_first_attempt", {"seconds": 300}, max_retries=1)["id"]
    wait_for_status(api, job_id, "started")

    os.kill(horse_of(worker), signal.SIGKILL)  # the OOM killer's way: the horse alone

    # The worker sees its horse die and retries the job itself: no sweep, no wait on heartbeats.
    retried = wait_for_status(api, job_id, "retrying", "queued", "succeeded", timeout_s=3)
    assert retried["attempts"] == 1 or retried["status"] == "succeeded"
    final = wait_for_status(api, job_id, "succeeded", timeout_s=30)
    assert (final["attempts"], final["result"]) == (2, {"attempt": 2})

    doomed = submit(api, "tests.kill_own_horse", max_retries=2)["id"]
    failed = wait_for_status(api, doomed, "failed", timeout_s=30)

    assert failed["attempts"] == 3
    assert "terminated unexpectedly" in failed["error"] and "signal 9" in failed["error"]
    assert worker.process.poll() is None  # the worker itself lives on and takes the next job
    assert wait_for_status(api, submit(api, "demo.echo")["id"], "succeeded", timeout_s=10)


@pytest.mark.parametrize("mode", ["fork", "simple"])
def test_sigterm_hands_back_a_job_that_outlives_the_shutdown_grace(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, redis: Redis, mode: str
) -> None:
    api = api_factory(retry_base_s=600, **TASKS)  # a retry's wait must not delay a job handed back
    workers.settings["worker_mode"] = mode  # the simple worker interrupts the job in place
    worker = workers.start(worker_shutdown_grace_s=2, **TASKS)
    job_id = submit(api, "tests.sleep_on_first_attempt", {"seconds": 300}, max_retries=1)["id"]
    wait_for_status(api, job_id, "started")

    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout_s=20) == 0
    handed = row(api, job_id)
    assert (handed["status"], handed["attempts"]) == ("retrying", 1)
    assert handed["error"].startswith("handed back: its worker was stopped")
    assert rq_job(redis, job_id).get_status() == RQStatus.QUEUED  # on its queue now, not in a wait
    assert redis.lpos("rq:queue:normal", job_id) is not None

    workers.start(**TASKS)
    final = wait_for_status(api, job_id, "succeeded", timeout_s=30)
    assert (final["attempts"], final["result"]) == (2, {"attempt": 2})
