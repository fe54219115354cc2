"""Failing jobs come back after growing waits, and a job whose retries are spent is dead-lettered."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus
from rq.results import Result

from backend.queues import LanesJob, queue_for, scheduled_at
from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import row, rq_job, stamp, submit, wait_for_status

pytestmark = pytest.mark.integration

#: With a 2 s base the waits are 2 s then 4–5 s. RQ stores a retry's time in whole seconds
#: (truncated, so a retry may run up to 1 s early) and its scheduler looks every ~1 s (so up to 1 s
#: late): a gap is its wait ± 1 s, which keeps the second gap longer than the first.
RETRY_BASE_S = 2
SCHEDULING_SLACK = timedelta(seconds=1)


def test_a_flaky_job_is_retried_after_growing_waits_and_then_succeeds(
    api_factory: Callable[..., TestClient], redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    api = api_factory(retry_base_s=RETRY_BASE_S)
    job_id = submit(api, "demo.flaky", {"failures": 2}, max_retries=3)["id"]
    intervals = rq_job(redis, job_id).retry_intervals
    assert intervals is not None and len(intervals) == 3
    assert intervals[0] < intervals[1] < intervals[2]
    workers.start()

    starts: dict[int, datetime] = {}  # attempt -> started_at, as the SQL row showed them
    retrying_seen: list[dict[str, Any]] = []

    def finished() -> dict[str, Any] | None:
        current = row(api, job_id)
        if current["started_at"] is not None:
            starts.setdefault(current["attempts"], stamp(current["started_at"]))
        if current["status"] == "retrying" and len(retrying_seen) < current["attempts"]:
            job = rq_job(redis, job_id)
            retrying_seen.append(
                {**current, "rq_status": job.get_status(), "rq_next": scheduled_at(job, redis)}
            )
        return current if current["status"] in {"succeeded", "failed"} else None

    final = wait_for(finished, timeout_s=30, interval_s=0.05, message="the flaky job to finish")

    assert final["status"] == "succeeded"
    assert final["attempts"] == 3
    assert final["result"] == {"succeeded_on_attempt": 3}
    assert final["error"] is None and final["next_retry_at"] is None
    assert sorted(starts) == [1, 2, 3]
    first_gap, second_gap = starts[2] - starts[1], starts[3] - starts[2]
    assert first_gap < second_gap
    for gap, wait_s in ((first_gap, intervals[0]), (second_gap, intervals[1])):
        assert (
            timedelta(seconds=wait_s) - SCHEDULING_SLACK
            <= gap
            <= timedelta(seconds=wait_s) + 3 * SCHEDULING_SLACK
        )

    # Between attempts the row said it was waiting, when it would run again, and why.
    assert [seen["attempts"] for seen in retrying_seen] == [1, 2]
    for seen in retrying_seen:
        assert (
            seen["error"]
            == f"backend.tasks.demo.FlakyError: attempt {seen['attempts']} of 3 fails on purpose"
        )
        assert seen["rq_status"] in {RQStatus.SCHEDULED, RQStatus.QUEUED, RQStatus.STARTED}
        next_retry_at = stamp(seen["next_retry_at"])
        if seen["rq_status"] == RQStatus.SCHEDULED:
            assert next_retry_at == seen["rq_next"]
        assert next_retry_at <= starts[seen["attempts"] + 1]

    job = rq_job(redis, job_id)
    assert job.get_status() == RQStatus.FINISHED
    assert job.retries_left == 1  # two of its three retries were used
    assert job.return_value() == {"succeeded_on_attempt": 3}
    assert job_id not in queue_for("normal", redis).failed_job_registry


def test_a_job_that_always_fails_ends_failed_after_its_retries_in_the_dead_letter_registry(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    job_id = submit(live_api, "demo.fail", {"message": "no luck"}, max_retries=2)["id"]
    workers.start()

    final = wait_for_status(live_api, job_id, "failed")

    assert final["attempts"] == 3
    assert final["error"] == "backend.tasks.demo.DemoFailure: no luck"
    assert "Traceback (most recent call last)" in final["traceback"]
    assert "raise DemoFailure(params.message)" in final["traceback"]
    assert final["finished_at"] is not None and final["next_retry_at"] is None

    job: LanesJob = rq_job(redis, job_id)
    assert job.get_status() == RQStatus.FAILED
    assert job.retries_left == 0
    last = job.latest_result()
    assert last is not None and last.type == Result.Type.FAILED
    assert "DemoFailure: no luck" in (last.exc_string or "")
    low = queue_for("low", redis)  # demo.fail's own priority
    assert job_id in low.failed_job_registry
    assert job_id not in low.scheduled_job_registry
    assert job_id not in low.job_ids
