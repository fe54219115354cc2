"""The soak: 10,000 jobs over the three queues, four real workers, one of them SIGKILLed every
30 s and replaced (as an orchestrator would). Every job ends in exactly one terminal row, none is
lost, SQL's counts equal RQ's, and high waits less than normal, normal less than low.

Slow (a few minutes): `make test` and CI run it; `pytest -m "not slow"` skips it.
LANES_SOAK_JOBS sets the number of jobs (10,000 by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import statistics
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis
from sqlalchemy import func, select

from backend.db import make_engine, make_sessionmaker
from backend.models import JobRow
from tests.conftest import tenant_key
from tests.helpers import ApiFactory, SchedulerFactory, WorkerFactory, WorkerProcess
from tests.integration.support import children

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

log = logging.getLogger(__name__)

JOBS = int(os.environ.get("LANES_SOAK_JOBS", "10000"))
WORKERS = 4
KILL_EVERY_S = 30
BATCH = 1000
TERMINAL = ("succeeded", "failed", "cancelled")


def test_soak_every_job_ends_once_while_workers_are_killed(
    redis_url: str, redis: Redis, database_url: str, tmp_path: Path
) -> None:
    apis = ApiFactory(redis_url, database_url, tmp_path)
    workers = WorkerFactory(redis_url, database_url, tmp_path)
    schedulers = SchedulerFactory(redis_url, database_url, tmp_path, settings={"reconcile_grace_s": 5})
    key = tenant_key(database_url, "acme")
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        api = apis.start(rate_limit_enabled=False, retry_base_s=1)
        schedulers.start()
        queues = ("low", "normal", "high")  # submitted low first: priority, not order, decides
        ids: list[str] = []
        with httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as client:
            for start in range(0, JOBS, BATCH):
                batch = [
                    {"task": "demo.echo", "params": {"n": n}, "priority": queues[n % 3]}
                    for n in range(start, min(JOBS, start + BATCH))
                ]
                answer = client.post("/api/v1/jobs/batch", json={"jobs": batch})
                assert answer.status_code == 202, answer.text
                ids += [job["id"] for job in answer.json()["jobs"]]
        assert len(set(ids)) == JOBS

        live = [workers.start(wait_ready=False) for _ in range(WORKERS)]
        killed = 0
        began = time.monotonic()
        next_kill = began + KILL_EVERY_S

        def ended() -> int:
            with sessions() as session:
                return int(
                    session.scalar(
                        select(func.count()).select_from(JobRow).where(JobRow.status.in_(TERMINAL))
                    )
                    or 0
                )

        while ended() < JOBS:
            assert time.monotonic() - began < 600, f"only {ended()} of {JOBS} jobs ended in 10 minutes"
            if time.monotonic() >= next_kill:
                victim = live.pop(0)
                kill_like_a_container(victim)
                killed += 1
                live.append(workers.start(wait_ready=False))
                next_kill += KILL_EVERY_S
            time.sleep(1)  # a progress poll; the loop's own deadline is the assert above
        drained_s = time.monotonic() - began

        with sessions() as session:
            rows = session.execute(
                select(
                    JobRow.id,
                    JobRow.status,
                    JobRow.priority,
                    JobRow.attempts,
                    JobRow.created_at,
                    JobRow.started_at,
                )
            ).all()
        assert len(rows) == JOBS and {row.id for row in rows} == set(ids)  # one row each, none lost
        by_status = {status: sum(1 for row in rows if row.status == status) for status in TERMINAL}
        assert by_status["succeeded"] == JOBS, by_status

        # SQL's counts equal RQ's: every job is in its queue's finished registry, none is waiting.
        for queue in queues:
            in_sql = sum(1 for row in rows if row.priority == queue)
            assert redis.zcard(f"rq:finished:{queue}") == in_sql, queue
            assert redis.llen(f"rq:queue:{queue}") == 0
            assert redis.zcard(f"rq:wip:{queue}") == 0

        waits = {
            queue: statistics.mean(
                (row.started_at - row.created_at).total_seconds() for row in rows if row.priority == queue
            )
            for queue in queues
        }
        assert waits["high"] < waits["normal"] < waits["low"], waits
        retried = sum(1 for row in rows if row.attempts > 1)
        log.info(
            "soak: %d jobs drained in %.0f s by %d workers (%d killed, %d jobs retried); mean waits %s",
            JOBS,
            drained_s,
            WORKERS,
            killed,
            retried,
            {q: round(w, 1) for q, w in waits.items()},
        )
    finally:
        apis.stop_all()
        workers.stop_all()
        schedulers.stop_all()
        engine.dispose()


def kill_like_a_container(worker: WorkerProcess) -> None:
    """SIGKILL the worker and its work-horse, if it has one this instant, at once."""
    horses = [pid for pid, group in children(worker.pid) if pid == group]
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    for horse in horses:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(horse, signal.SIGKILL)
