"""A job hash that names a function outside the task registry is failed, never run."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus
from rq.results import Result

from backend.queues import queue_for
from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import row, rq_job

pytestmark = pytest.mark.integration


def test_a_job_naming_an_unregistered_function_fails_as_unknown_and_gets_a_failed_row(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, database_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    # Straight onto the queue, behind the API's back: no SQL row exists for this job.
    job_id = queue_for("normal", redis).enqueue_call("os.system", args=[f"touch {marker}"]).id
    assert live_api.get(f"/api/v1/jobs/{job_id}").status_code == 404
    worker = workers.start()

    wait_for(lambda: rq_job(redis, job_id).get_status() == RQStatus.FAILED, message="the job to fail in RQ")
    failed = wait_for(
        lambda: (
            (r := live_api.get(f"/api/v1/jobs/{job_id}")).status_code == 200
            and r.json()["status"] == "failed"
            and r.json()
        ),
        message="the worker's row to show the failure",
    )

    assert not marker.exists(), "os.system ran"
    job = rq_job(redis, job_id)
    last = job.latest_result()
    assert last is not None and last.type == Result.Type.FAILED
    assert "UnknownTask: unknown task: 'os.system'" in (last.exc_string or "")
    assert job_id in queue_for("normal", redis).failed_job_registry

    assert failed == row(live_api, job_id)
    assert failed["task"] == "os.system"
    assert failed["queue"] == "normal" and failed["priority"] == "normal"
    assert failed["params"] == {"args": [f"touch {marker}"]}  # what the hash asked for, on record
    assert failed["error"] == "backend.errors.UnknownTask: unknown task: 'os.system'"
    assert "Traceback" in failed["traceback"]
    assert failed["attempts"] == 1 and failed["max_retries"] == 0
    assert failed["result"] is None
    assert failed["worker"] == worker.name == job.worker_name
    assert failed["started_at"] is not None and failed["finished_at"] is not None
