"""The SQL row follows RQ step by step, and a broken mirror never costs a job its success."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus
from rq.results import Result

from backend.db import make_engine, make_sessionmaker
from backend.enums import JobStatus
from backend.queues import MIRROR_PENDING_KEY, queue_for
from backend.sync import JobMirror
from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import RQ_TO_ROW, row, rq_job, stamp, submit

pytestmark = pytest.mark.integration

#: The steps of a job that runs once and succeeds, as its row shows them.
LADDER = [JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SUCCEEDED]


def step(status: JobStatus) -> int:
    return LADDER.index(status)


def test_the_sql_row_is_never_more_than_one_step_behind_rq(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    job_id = submit(live_api, "demo.sleep", {"seconds": 2, "steps": 4})["id"]
    workers.start()

    observations: list[dict[str, Any]] = []

    def observe() -> bool:
        # RQ read before and after the row: RQ's status at the moment the row was read lies between.
        before = rq_job(redis, job_id)
        current = row(live_api, job_id)
        after = rq_job(redis, job_id)
        observations.append(
            {
                "before": RQ_TO_ROW[before.get_status()],
                "row": JobStatus(current["status"]),
                "after": RQ_TO_ROW[after.get_status()],
                "progress": current["progress"],
                "rq_progress": after.meta.get("progress", 0),
            }
        )
        return current["status"] == "succeeded"

    wait_for(observe, timeout_s=30, message="the sleep job to succeed")

    for seen in observations:
        assert step(seen["before"]) - 1 <= step(seen["row"]) <= step(seen["after"]), seen
        if seen["row"] == JobStatus.STARTED:
            assert seen["progress"] <= seen["rq_progress"], seen  # Redis first, then SQL
    assert {seen["row"] for seen in observations} >= {JobStatus.STARTED, JobStatus.SUCCEEDED}

    progress = [seen["progress"] for seen in observations]
    assert progress == sorted(progress), "progress went backwards"
    assert any(0 < value < 100 for value in progress), "no progress was seen while the job ran"
    assert progress[-1] == 100

    final, job = row(live_api, job_id), rq_job(redis, job_id)
    assert job.get_status() == RQStatus.FINISHED
    assert final["result"] == job.return_value()
    assert final["stage"] == "step 4/4" == job.meta["stage"]
    assert final["worker"] == job.worker_name
    assert abs(stamp(final["started_at"]) - job.started_at).total_seconds() < 1
    assert abs(stamp(final["finished_at"]) - job.ended_at).total_seconds() < 1


def test_a_job_succeeds_when_its_sql_mirror_cannot_be_written_and_its_row_is_replayed_later(
    live_api: TestClient, redis: Redis, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    # The API writes to the real database; the worker gets an SQLite file without a `jobs`
    # table, so every one of its mirror writes fails, whichever database is under test.
    tableless = tmp_path / "no-tables.db"
    sqlite3.connect(tableless).close()
    broken = WorkerFactory(redis_url=redis_url, database_url=f"sqlite:///{tableless}", log_dir=tmp_path)
    try:
        job_id = submit(live_api, "demo.echo", {"hello": "world"})["id"]
        worker = broken.start()
        wait_for(lambda: rq_job(redis, job_id).get_status() == RQStatus.FINISHED, message="the job to finish")
        wait_for(lambda: redis.sismember(MIRROR_PENDING_KEY, job_id), message="the job noted for replay")
        wait_for(lambda: "SQL mirror write failed" in worker.log(), message="the failure to be logged")
    finally:
        broken.stop_all()

    job = rq_job(redis, job_id)
    assert job.get_status() == RQStatus.FINISHED
    assert job.return_value() == {"hello": "world"}
    assert job.latest_result().type == Result.Type.SUCCESSFUL
    assert job_id in queue_for("normal", redis).finished_job_registry
    assert job_id not in queue_for("normal", redis).failed_job_registry
    assert f"job {job_id}: SQL mirror write failed" in worker.log()
    assert "no such table: jobs" in worker.log()
    assert redis.smembers(MIRROR_PENDING_KEY) == {job_id.encode()}
    assert row(live_api, job_id)["status"] == "queued"  # the real row has not heard of the run yet

    # What a healthy worker's maintenance does: rebuild the noted row from RQ's record.
    engine = make_engine(database_url)
    try:
        assert JobMirror(sessions=make_sessionmaker(engine), redis=redis).replay_pending() == 1
    finally:
        engine.dispose()

    assert not redis.exists(MIRROR_PENDING_KEY)
    replayed = row(live_api, job_id)
    assert replayed["status"] == "succeeded"
    assert replayed["result"] == {"hello": "world"}
    assert replayed["attempts"] == 1 and replayed["progress"] == 100
    # The replay takes when and where the job ran from RQ's record, as the live mirror would have.
    assert replayed["worker"] == job.worker_name
    assert abs(stamp(replayed["started_at"]) - job.started_at).total_seconds() < 1
    assert abs(stamp(replayed["finished_at"]) - job.ended_at).total_seconds() < 1
