"""The reconciler puts SQL and RQ back in step: lost jobs run again, dead workers' jobs move on."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus
from sqlalchemy.orm import Session, sessionmaker

from backend import mirror
from backend.config import Settings
from backend.db import make_engine, make_sessionmaker, session_scope, utcnow
from backend.enums import JobStatus
from backend.jobs import enqueue_row, new_job_id
from backend.models import JobRow
from backend.queues import MIRROR_PENDING_KEY, attempt_of, queue_for
from backend.reconcile import WORKER_DIED, ReconcileReport, reconcile
from tests.helpers import ROOT, WorkerFactory, lanes_env, wait_for
from tests.integration.support import row, rq_job, submit, wait_for_status

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def settings(make_settings: Callable[..., Settings], redis_url: str) -> Settings:
    """Settings for runs that look at every row, however recently it was touched."""
    return make_settings(redis_url, reconcile_grace_s=0, retry_base_s=1)


def run(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings, now: datetime | None = None
) -> ReconcileReport:
    report = reconcile(sessions=sessions, redis=redis, settings=settings, now=now)
    assert not report.errors, report
    return report


def insert_row(sessions: sessionmaker[Session], *, touched_s_ago: float = 300, **values: Any) -> JobRow:
    """A row as submit writes it, last touched `touched_s_ago`; nothing is put in Redis."""
    at = utcnow() - timedelta(seconds=touched_s_ago)
    columns: dict[str, Any] = {
        "id": new_job_id(),
        "task": "demo.echo",
        "queue": "normal",
        "priority": "normal",
        "status": JobStatus.QUEUED.value,
        "progress": 0,
        "params": {"n": 1},
        "attempts": 0,
        "epoch": 0,
        "max_retries": 3,
        "timeout_s": 30,
        "webhook_attempts": 0,
        "created_at": at,
        "enqueued_at": at,
        "updated_at": at,
        **values,
    }
    with session_scope(sessions) as session:
        session.add(JobRow(**columns))
    return JobRow(**columns)


def current(sessions: sessionmaker[Session], job_id: str) -> JobRow:
    with sessions() as session:
        found = session.get(JobRow, job_id)
        assert found is not None
        return found


# -- lost jobs -----------------------------------------------------------------------------------


def test_a_job_deleted_from_its_queue_behind_the_platforms_back_is_enqueued_again_and_runs(
    live_api: TestClient,
    redis: Redis,
    workers: WorkerFactory,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    job_id = submit(live_api, "demo.echo", {"hello": "again"})["id"]
    assert redis.lrem("rq:queue:normal", 0, job_id) == 1  # gone from the list; its hash says queued

    report = run(sessions, redis, settings)

    assert report.requeued == [job_id] and report.repaired == 1 and report.checked == 1
    assert queue_for("normal", redis).job_ids == [job_id]
    assert run(sessions, redis, settings).repaired == 0  # on its queue again: nothing more to do
    workers.start()
    final = wait_for_status(live_api, job_id, "succeeded")
    assert final["result"] == {"hello": "again"} and final["attempts"] == 1


def test_jobs_rq_lost_are_put_back_under_their_retry_policy(
    redis: Redis, sessions: sessionmaker[Session], settings: Settings
) -> None:
    # Redis restarted empty under these rows, or the process that wrote them died before enqueueing.
    never_enqueued = insert_row(sessions)
    waiting_for_retry = insert_row(sessions, status="retrying", attempts=1, max_retries=3, error="boom")
    running_retry_left = insert_row(sessions, status="started", attempts=1, max_retries=2, worker="w-gone")
    running_last_try = insert_row(sessions, status="started", attempts=1, max_retries=0, worker="w-gone")
    # A requeue committed its next epoch and died before replacing the failed run's job.
    requeued = insert_row(sessions, epoch=0, status="failed", attempts=1, max_retries=0)
    enqueue_row(redis=redis, settings=settings, row=requeued)
    redis.hset(f"rq:job:{requeued.id}", "status", RQStatus.FAILED.value)
    redis.zadd("rq:failed:normal", {requeued.id: time.time() + 3600})
    with session_scope(sessions) as session:
        mirror.advance(session, job_id=requeued.id, status=JobStatus.QUEUED, attempt=1, epoch=1)

    report = run(sessions, redis, settings)

    assert sorted(report.requeued) == sorted([never_enqueued.id, waiting_for_retry.id, requeued.id])
    assert report.retried == [running_retry_left.id] and report.failed == [running_last_try.id]
    queued = queue_for("normal", redis).job_ids
    assert sorted(queued) == sorted(
        [never_enqueued.id, waiting_for_retry.id, requeued.id, running_retry_left.id]
    )

    # Each job's next run is numbered on from the attempts already made, within its policy.
    assert attempt_of(rq_job(redis, never_enqueued.id)) == 1
    retry = rq_job(redis, waiting_for_retry.id)
    assert attempt_of(retry) == 2 and retry.retries_left == 2  # 4 runs in all: 2 more after this one
    after_death = rq_job(redis, running_retry_left.id)
    assert attempt_of(after_death) == 2 and after_death.retries_left == 1
    dead = current(sessions, running_retry_left.id)
    assert (dead.status, dead.attempts, dead.error) == ("retrying", 1, WORKER_DIED)
    spent = current(sessions, running_last_try.id)
    assert (spent.status, spent.attempts, spent.error) == ("failed", 1, WORKER_DIED) and spent.finished_at
    assert not redis.exists(f"rq:job:{running_last_try.id}")
    # The requeued job is the new epoch's, and the failed run's record is gone.
    again = rq_job(redis, requeued.id)
    assert again.meta["epoch"] == 1 and again.get_status() == RQStatus.QUEUED
    assert redis.zscore("rq:failed:normal", requeued.id) is None
    assert run(sessions, redis, settings).repaired == 0


def test_a_row_committed_moments_ago_is_left_alone_until_its_grace_period_is_over(
    redis: Redis, sessions: sessionmaker[Session], make_settings: Callable[..., Settings], redis_url: str
) -> None:
    # The API has committed the row and not enqueued it yet: in flight, or dead before enqueueing.
    settings = make_settings(redis_url)
    assert settings.reconcile_grace_s == 30
    fresh = insert_row(sessions, touched_s_ago=1)

    assert run(sessions, redis, settings).checked == 0
    assert redis.llen("rq:queue:normal") == 0

    later = run(sessions, redis, settings, now=utcnow() + timedelta(seconds=settings.reconcile_grace_s))
    assert later.requeued == [fresh.id]
    job = rq_job(redis, fresh.id)
    assert job.kwargs == {"n": 1} and job.meta["epoch"] == 0 and job.meta["max_retries"] == 3


def test_jobs_rq_still_holds_are_left_alone_waiting_on_a_dependency_or_a_delay_or_taken_by_a_worker(
    redis: Redis, redis_url: str, database_url: str, sessions: sessionmaker[Session], settings: Settings
) -> None:
    parent = insert_row(sessions)
    enqueue_row(redis=redis, settings=settings, row=parent)
    child = insert_row(sessions, status="scheduled", depends_on=[parent.id])
    enqueue_row(redis=redis, settings=settings, row=child)
    delayed = insert_row(sessions, status="scheduled", run_at=utcnow() + timedelta(hours=1))
    enqueue_row(redis=redis, settings=settings, row=delayed)
    taken = insert_row(sessions)
    enqueue_row(redis=redis, settings=settings, row=taken)
    # What a single-queue worker's BLMOVE does: the job leaves its queue for the intermediate list.
    redis.lrem("rq:queue:normal", 0, taken.id)
    redis.lpush("rq:queue:normal:intermediate", taken.id)

    # The command `make reconcile` runs (here with --json), on this Redis and database.
    env = lanes_env(redis_url=redis_url, database_url=database_url, reconcile_grace_s=0)
    done = subprocess.run(
        [sys.executable, "-m", "backend.reconcile", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["checked"] == 4 and report["repaired"] == 0 and report["errors"] == [], report
    assert "reconcile: checked 4 rows" in done.stderr
    assert rq_job(redis, child.id).get_status() == RQStatus.DEFERRED
    assert child.id in queue_for("normal", redis).deferred_job_registry
    assert delayed.id in queue_for("normal", redis).scheduled_job_registry
    assert queue_for("normal", redis).job_ids == [parent.id]
    assert redis.lrange("rq:queue:normal:intermediate", 0, -1) == [taken.id.encode()]
    assert {current(sessions, job.id).status for job in (child, delayed)} == {"scheduled"}


# -- rows behind RQ ------------------------------------------------------------------------------


def test_a_row_that_missed_its_jobs_whole_run_is_brought_up_to_date(
    live_api: TestClient,
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    # The worker's database has no `jobs` table, so every mirror write of the run fails.
    tableless = tmp_path / "no-tables.db"
    sqlite3.connect(tableless).close()
    broken = WorkerFactory(redis_url=redis_url, database_url=f"sqlite:///{tableless}", log_dir=tmp_path)
    job_id = submit(live_api, "demo.echo", {"hello": "late"})["id"]
    try:
        broken.start()
        wait_for(lambda: rq_job(redis, job_id).get_status() == RQStatus.FINISHED, message="the job to finish")
        wait_for(lambda: redis.sismember(MIRROR_PENDING_KEY, job_id), message="the failed write noted")
    finally:
        broken.stop_all()
    redis.delete(MIRROR_PENDING_KEY)  # the note is lost too: only the reconciler can see the gap
    assert row(live_api, job_id)["status"] == "queued"

    report = run(sessions, redis, settings)

    assert report.synced == [job_id] and report.repaired == 1
    final, job = row(live_api, job_id), rq_job(redis, job_id)
    assert final["status"] == "succeeded" and final["result"] == {"hello": "late"}
    assert final["attempts"] == 1 and final["worker"] == job.worker_name
    assert run(sessions, redis, settings).checked == 0  # finished rows are not looked at again


def test_a_job_still_waiting_on_a_dependency_that_failed_is_cancelled(
    redis: Redis, sessions: sessionmaker[Session], settings: Settings
) -> None:
    parent = insert_row(sessions)
    enqueue_row(redis=redis, settings=settings, row=parent)
    child = insert_row(sessions, status="scheduled", depends_on=[parent.id])
    enqueue_row(redis=redis, settings=settings, row=child)
    # The parent failed, and the cascade that should have cancelled its dependents never ran.
    with session_scope(sessions) as session:
        values = mirror.failed_values(error="ValueError: bad", traceback=None)
        mirror.advance(session, job_id=parent.id, status=JobStatus.FAILED, attempt=1, values=values)
    assert rq_job(redis, child.id).get_status() == RQStatus.DEFERRED

    report = run(sessions, redis, settings)

    assert report.cancelled == [child.id]
    waiting = current(sessions, child.id)
    assert waiting.status == "cancelled" and waiting.cancelled_by == "dependency"
    assert waiting.error == f"dependency {parent.id} failed: ValueError: bad"
    assert rq_job(redis, child.id).get_status() == RQStatus.CANCELED


# -- dead workers --------------------------------------------------------------------------------


def test_a_job_rq_says_is_running_on_no_live_worker_is_retried_or_failed_as_rq_would(
    redis: Redis, sessions: sessionmaker[Session], settings: Settings
) -> None:
    # A worker claimed each job (RQ status started) and died before registering its execution.
    retried = insert_row(sessions, max_retries=1)
    spent = insert_row(sessions, max_retries=0)
    for job in (retried, spent):
        enqueue_row(redis=redis, settings=settings, row=job)
        redis.lrem("rq:queue:normal", 0, job.id)
        redis.hset(f"rq:job:{job.id}", mapping={"status": RQStatus.STARTED.value, "worker_name": "w-gone"})
        with session_scope(sessions) as session:
            values = mirror.started_values(worker="w-gone", started_at=utcnow() - timedelta(minutes=5))
            mirror.advance(session, job_id=job.id, status=JobStatus.STARTED, attempt=1, values=values)

    report = run(sessions, redis, settings)

    assert report.retried == [retried.id] and report.failed == [spent.id]
    assert rq_job(redis, retried.id).get_status() == RQStatus.SCHEDULED  # RQ's retry wait, then the queue
    assert retried.id in queue_for("normal", redis).scheduled_job_registry
    assert rq_job(redis, spent.id).get_status() == RQStatus.FAILED
    assert spent.id in queue_for("normal", redis).failed_job_registry
    again = current(sessions, retried.id)
    assert (again.status, again.attempts, again.error) == ("retrying", 1, WORKER_DIED) and again.next_retry_at
    dead = current(sessions, spent.id)
    assert (dead.status, dead.attempts, dead.error) == ("failed", 1, WORKER_DIED)


@pytest.mark.parametrize(("keeps_alive_key", "outcome"), [(True, "retried"), (False, "left running")])
def test_a_worker_that_keeps_an_alive_key_is_dead_when_it_lapses_and_one_that_keeps_none_is_judged_by_rq(
    redis: Redis, sessions: sessionmaker[Session], settings: Settings, keeps_alive_key: bool, outcome: str
) -> None:
    # A worker RQ still counts alive (its key, an execution before its deadline) but that stopped
    # beating: a worker of this Lanes is dead; one of an older Lanes (rolling upgrade) is not.
    job = insert_row(sessions, max_retries=1)
    enqueue_row(redis=redis, settings=settings, row=job)
    redis.lrem("rq:queue:normal", 0, job.id)
    redis.hset(f"rq:job:{job.id}", mapping={"status": RQStatus.STARTED.value, "worker_name": "w-quiet"})
    redis.hset(
        "rq:worker:w-quiet", mapping={"state": "busy", **({"lanes_alive": 1} if keeps_alive_key else {})}
    )
    redis.zadd(f"rq:executions:{job.id}", {"e1": time.time()})
    redis.zadd("rq:wip:normal", {f"{job.id}:e1": time.time() + 60})
    with session_scope(sessions) as session:
        values = mirror.started_values(worker="w-quiet", started_at=utcnow() - timedelta(minutes=5))
        mirror.advance(session, job_id=job.id, status=JobStatus.STARTED, attempt=1, values=values)

    report = run(sessions, redis, settings)

    if outcome == "retried":
        assert report.retried == [job.id]
        assert current(sessions, job.id).status == "retrying"
    else:
        assert report.repaired == 0
        assert current(sessions, job.id).status == "started"
