"""Reading a job's two records in the integration stories (its SQL row and RQ's job), and
finding and killing a worker's processes."""

from __future__ import annotations

import contextlib
import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus

from backend.enums import JobStatus
from backend.queues import LanesJob
from tests.helpers import WorkerProcess, wait_for

#: How a job's RQ status reads as the status its SQL row should show (or trail by one step).
RQ_TO_ROW = {
    RQStatus.QUEUED: JobStatus.QUEUED,
    RQStatus.STARTED: JobStatus.STARTED,
    RQStatus.FINISHED: JobStatus.SUCCEEDED,
    RQStatus.SCHEDULED: JobStatus.RETRYING,
    RQStatus.FAILED: JobStatus.FAILED,
}


def submit(api: TestClient, task: str, params: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """POST a job and return its row as the API shows it."""
    response = api.post("/api/v1/jobs", json={"task": task, "params": params or {}, **fields})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def row(api: TestClient, job_id: str) -> dict[str, Any]:
    """The job's SQL row, read through GET /api/v1/jobs/{id}."""
    response = api.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_status(api: TestClient, job_id: str, *statuses: str, timeout_s: float = 30) -> dict[str, Any]:
    """Poll the job's row until its status is one of `statuses`; return that row."""
    found: dict[str, Any] = wait_for(
        lambda: (current := row(api, job_id))["status"] in statuses and current,
        timeout_s=timeout_s,
        message=f"job {job_id} to be {' or '.join(statuses)}",
    )
    return found


def rq_job(redis: Redis, job_id: str) -> LanesJob:
    """RQ's own record of the job, fetched fresh."""
    return LanesJob.fetch(job_id, connection=redis)


def wait_blocked_in_dequeue(redis: Redis, worker_name: str) -> None:
    """Wait until the (only) worker sits in its blocking BLPOP on the queues.

    Only then is a SIGTERM sure to meet RQ's handler: a worker shows in Redis (and the
    `workers` fixture returns) before it installs its signal handlers, and a SIGTERM in that
    window kills it outright (exit -15) instead of asking it to stop.
    """
    key = f"rq:worker:{worker_name}"
    wait_for(
        lambda: (
            redis.hget(key, "state") == b"idle"
            and any(c["cmd"] == "blpop" and "b" in c["flags"] for c in redis.client_list())
        ),
        timeout_s=20,
        message=f"worker {worker_name} to wait for jobs",
    )


def gone_from_rq(redis: Redis, worker_name: str) -> bool:
    """True when the worker has told RQ it died: out of `rq:workers`, its hash stamped `death`."""
    key = f"rq:worker:{worker_name}"
    return not redis.sismember("rq:workers", key) and bool(redis.hexists(key, "death"))


def stamp(value: str | None) -> datetime:
    """A timestamp from the API's JSON."""
    assert value is not None, "expected a timestamp"
    return datetime.fromisoformat(value)


# -- processes -----------------------------------------------------------------------------------


def children(pid: int) -> list[tuple[int, int]]:
    """(pid, process group) of each live child of `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(parent) == pid and state != "Z":
            found.append((int(stat.parent.name), int(group)))
    return found


def running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def horse_of(worker: WorkerProcess) -> int:
    """The busy worker's work-horse: the child that leads its own process group (RQ's setpgrp)."""
    horses: list[int] = wait_for(
        lambda: [pid for pid, group in children(worker.pid) if pid == group], message="the work-horse"
    )
    return horses[0]


def kill_worker_and_horse(worker: WorkerProcess) -> list[int]:
    """SIGKILL a busy worker and its work-horse at once, as a container kill does; the pids of
    its other children (RQ's scheduler process).

    The parent goes first, so it never sees its horse die and never reports the job's end.
    """
    horse = horse_of(worker)
    others = [pid for pid, group in children(worker.pid) if pid != group]
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(horse, signal.SIGKILL)
    return others
