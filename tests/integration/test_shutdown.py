"""SIGTERM is a warm shutdown: the running job finishes, nothing new starts, the worker exits 0."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import JobStatus as RQStatus
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from backend.metrics import COUNTERS_KEY
from backend.queues import MIRROR_PENDING_KEY, queue_for
from tests.helpers import WorkerFactory, statements_waiting_for_a_lock, wait_for
from tests.integration.support import (
    gone_from_rq,
    row,
    rq_job,
    submit,
    wait_blocked_in_dequeue,
    wait_for_status,
)

pytestmark = pytest.mark.integration

#: The spec's bound on how long an idle worker may take to leave after SIGTERM.
IDLE_EXIT_BOUND_S = 2.0


def test_sigterm_during_a_job_lets_it_finish_then_the_worker_exits_without_taking_another(
    live_api: TestClient, redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    # A poll shorter than the job: the maintenance due right after it must not start the worker's
    # RQ scheduler again (stopped on SIGTERM), which held the exit for ever.
    worker = workers.start("normal", worker_poll_s=1)
    running = submit(live_api, "demo.sleep", {"seconds": 3, "steps": 3})["id"]
    wait_for_status(live_api, running, "started")
    behind = submit(live_api, "demo.sleep", {"seconds": 0, "steps": 1})["id"]

    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout_s=20) == 0, worker.log()

    done = row(live_api, running)
    assert done["status"] == "succeeded", done
    assert done["progress"] == 100
    assert rq_job(redis, running).get_status() == RQStatus.FINISHED
    assert rq_job(redis, running).return_value()["slept_s"] >= 3

    waiting = row(live_api, behind)
    assert waiting["status"] == "queued" and waiting["started_at"] is None and waiting["attempts"] == 0
    assert rq_job(redis, behind).get_status() == RQStatus.QUEUED
    assert queue_for("normal", redis).job_ids == [behind]
    assert gone_from_rq(redis, worker.name)


def test_an_idle_worker_exits_within_two_seconds_of_sigterm(
    redis: Redis, workers: WorkerFactory, database_url: str
) -> None:
    worker = workers.start()
    wait_blocked_in_dequeue(redis, worker.name)

    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = worker.wait(timeout_s=10)
    took_s = time.monotonic() - began

    assert code == 0, worker.log()
    assert gone_from_rq(redis, worker.name)
    assert took_s < IDLE_EXIT_BOUND_S, f"took {took_s:.2f} s"


@contextmanager
def sql_writes_blocked(database_url: str) -> Iterator[Callable[[], bool]]:
    """Hold a lock that every write to the `jobs` table waits for (reads go on), until the block ends.

    Yields a check that is True once some writer waits for the lock, where the database can tell
    (PostgreSQL); SQLite cannot, so there it always says True.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(str(url.database), isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")  # the database's one write lock
            yield lambda: True
            connection.execute("ROLLBACK")
        finally:
            connection.close()
        return
    engine = create_engine(database_url)
    try:
        with engine.connect() as holder, engine.connect() as observer:
            holder.execute(text("LOCK TABLE jobs IN SHARE MODE"))

            def writer_waits() -> bool:
                return statements_waiting_for_a_lock(observer, "UPDATE jobs") > 0

            yield writer_waits
            holder.rollback()
    finally:
        engine.dispose()


def test_sigterm_while_the_worker_replays_a_mirror_write_still_stops_it(
    live_api: TestClient,
    redis: Redis,
    workers: WorkerFactory,
    database_url: str,
) -> None:
    # A worker may be stuck replaying a failed mirror write while the database is slow or
    # locked; that is when operators restart workers, so the stop must get through.
    worker = workers.start(worker_poll_s=1)  # replays pending mirror writes every second
    job_id = submit(live_api, "demo.echo", {"n": 1})["id"]
    wait_for_status(live_api, job_id, "succeeded")
    # The worker sends its job's metrics within a second, on a pooled Redis connection that may be
    # the one the replay's XREVRANGE used, hiding it from the look below: let them go first.
    wait_for(
        lambda: redis.hget(COUNTERS_KEY, "lanes_jobs_succeeded|task=demo.echo"),
        message="the job's metrics to be sent",
    )

    with sql_writes_blocked(database_url) as writer_waits:
        redis.sadd(MIRROR_PENDING_KEY, job_id)  # as if its last mirror write had failed
        # The replay reads the job's result (XREVRANGE), then waits for our lock to write the row.
        wait_for(
            lambda: any(client["cmd"] == "xrevrange" for client in redis.client_list()) and writer_waits(),
            message="the worker to be replaying the job's row",
        )
        worker.signal(signal.SIGTERM)

    try:
        code: int | None = worker.wait(timeout_s=3)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, f"the worker did not stop on SIGTERM:\n{worker.log()[-3000:]}"
