"""A worker drains its queues in strict priority order: high, then normal, then low."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus

from backend.queues import queue_for
from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import row, rq_job, stamp, submit

pytestmark = pytest.mark.integration

JOBS_PER_QUEUE = 3


def test_jobs_queued_while_no_worker_runs_are_then_run_high_first_and_low_last(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    # Submitted low first, so neither submit order nor FIFO could explain a high-first run.
    submitted: dict[str, list[str]] = {}
    for priority in ("low", "normal", "high"):
        submitted[priority] = [
            submit(live_api, "demo.echo", {"priority": priority, "n": n}, priority=priority)["id"]
            for n in range(JOBS_PER_QUEUE)
        ]
    for priority, ids in submitted.items():
        assert queue_for(priority, redis).job_ids == ids
        assert all(row(live_api, job_id)["status"] == "queued" for job_id in ids)

    workers.start(name="drainer")
    all_ids = [job_id for ids in submitted.values() for job_id in ids]

    def all_succeeded() -> list[dict[str, Any]] | None:
        found = [row(live_api, job_id) for job_id in all_ids]
        return found if all(r["status"] == "succeeded" for r in found) else None

    rows = wait_for(all_succeeded, timeout_s=30, message="every job to succeed")

    run_order = [r["id"] for r in sorted(rows, key=lambda r: stamp(r["started_at"]))]
    assert run_order == submitted["high"] + submitted["normal"] + submitted["low"]
    for r in rows:
        assert r["worker"] == "drainer"
        assert r["attempts"] == 1
        assert r["result"] == r["params"]
        job = rq_job(redis, r["id"])
        assert job.get_status() == RQStatus.FINISHED
        assert job.return_value() == r["params"]
    assert all(queue_for(priority, redis).count == 0 for priority in submitted)
