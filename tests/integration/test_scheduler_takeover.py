"""When the worker that moves due jobs back onto the queues dies, another worker takes over."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import submit, wait_for_status

pytestmark = pytest.mark.integration

LOCK = "rq:scheduler-lock:normal"


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def test_a_delayed_job_still_runs_on_time_after_the_scheduling_worker_is_killed(
    live_api: TestClient, redis: Redis, workers: WorkerFactory
) -> None:
    first = workers.start(worker_poll_s=1)
    wait_for(lambda: redis.get(LOCK), message="the first worker to hold the scheduler lock")
    owner = redis.get(LOCK)
    second = workers.start(worker_poll_s=1)

    # The worker takes the lock first and forks its scheduler process just after: wait for the
    # process, or the kill below misses it and it lives on as an orphan holding the lock.
    scheduler_pids = wait_for(lambda: children_of(first.pid), message="the first worker's scheduler process")
    for pid in [*scheduler_pids, first.pid]:  # its scheduler process and the worker, at once
        os.kill(pid, signal.SIGKILL)
    first.wait()
    redis.delete(*redis.keys("rq:scheduler-lock:*"))  # stands in for the locks expiring (61 s)

    job_id = submit(live_api, "demo.echo", {"late": True}, delay_s=1)["id"]

    done = wait_for_status(live_api, job_id, "succeeded", timeout_s=20)
    assert done["worker"] == second.name
    assert redis.get(LOCK) not in (None, owner)
