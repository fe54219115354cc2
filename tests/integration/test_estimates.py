"""Waiting jobs carry a position and estimated times, and the estimates hold up against real workers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy.orm import Session

from backend.durations import DurationStats
from backend.estimates import Estimate, estimates_for_many
from backend.models import JobRow
from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import row, stamp, submit

pytestmark = pytest.mark.integration

JOB_S = 1.0  # every job of the story sleeps this long: a uniform workload


def run_all(api: TestClient, ids: list[str]) -> dict[str, dict[str, object]]:
    """Wait until every job has succeeded; their rows, by id."""

    def done() -> dict[str, dict[str, object]]:
        rows = {job_id: row(api, job_id) for job_id in ids}
        return rows if all(r["status"] == "succeeded" for r in rows.values()) else {}

    return wait_for(done, timeout_s=30, interval_s=0.1, message="every job to succeed")


def estimate_all(session: Session, redis: Redis, ids: list[str]) -> tuple[datetime, dict[str, Estimate]]:
    """The estimates of the jobs `ids`, asked now with fresh averages; and when they were asked."""
    session.expire_all()
    rows = [session.get(JobRow, job_id) for job_id in ids]
    now = datetime.now(UTC)
    found = estimates_for_many(
        session=session, redis=redis, jobs=[r for r in rows if r], now=now, stats=DurationStats()
    )
    return now, found


def test_a_backlog_behind_two_busy_workers_is_estimated_in_the_order_it_runs_and_about_as_long(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, session: Session
) -> None:
    workers.start(name="est-a")
    workers.start(name="est-b")
    params = {"seconds": JOB_S, "steps": 1}
    run_all(live_api, [submit(live_api, "demo.sleep", params)["id"] for _ in range(2)])  # history

    # Two jobs keep both workers busy; behind them wait low jobs, then normal, then high ones.
    busy = [submit(live_api, "demo.sleep", params)["id"] for _ in range(2)]
    wait_for(lambda: all(row(live_api, job_id)["status"] == "started" for job_id in busy), timeout_s=10)
    # In one request: the busy jobs must still be running when the estimates are asked for.
    batch = [
        {"task": "demo.sleep", "params": params, "priority": p}
        for p in ("low", "normal", "high")
        for _ in range(3)
    ]
    response = live_api.post("/api/v1/jobs/batch", json={"jobs": batch})
    assert response.status_code == 202, response.text
    waiting: list[str] = [job["id"] for job in response.json()["jobs"]]
    asked_at, found = estimate_all(session, redis, waiting)

    assert set(found) == set(waiting), "every job behind the busy workers is waiting and estimated"
    assert [found[job_id].position for job_id in waiting] == [1, 2, 3] * 3
    assert [found[job_id].ahead for job_id in waiting] == [6, 7, 8, 3, 4, 5, 0, 1, 2]
    for estimate in found.values():
        assert estimate.basis["workers"] == 2 and estimate.basis["busy"] == 2
        assert estimate.estimated_start_at is not None and estimate.estimated_finish_at is not None
        assert estimate.estimated_start_at < estimate.estimated_finish_at

    rows = run_all(live_api, busy + waiting)
    started = {job_id: stamp(str(rows[job_id]["started_at"])) for job_id in waiting}
    estimated = {job_id: found[job_id].estimated_start_at for job_id in waiting}
    # The order: a job estimated clearly earlier (by half a job or more) really started earlier.
    for a in waiting:
        for b in waiting:
            ea, eb = estimated[a], estimated[b]
            assert ea is not None and eb is not None
            if (eb - ea).total_seconds() >= JOB_S / 2:
                assert started[a] <= started[b], f"{a} was estimated to start before {b}"
    # The size: each real wait is within a factor of three of the estimated one (give or take
    # half a second, for the waits too short for a ratio to mean much).
    for job_id in waiting:
        est_start = estimated[job_id]
        assert est_start is not None
        estimated_wait_s = (est_start - asked_at).total_seconds()
        actual_wait_s = (started[job_id] - asked_at).total_seconds()
        assert estimated_wait_s / 3 - 0.5 <= actual_wait_s <= 3 * estimated_wait_s + 0.5, (
            f"{job_id}: estimated {estimated_wait_s:.2f} s, waited {actual_wait_s:.2f} s"
        )

    _, after = estimate_all(session, redis, waiting)
    assert after == {}, "a job that has run has no estimate"
