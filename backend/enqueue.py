"""Putting jobs in Redis: queued, scheduled for a `run_at`, or deferred on dependencies.

`enqueue_row` is the one way to put a row's job in Redis: submit, batch, requeue and the
reconciler all use it. In RQ a job is queued on its priority's queue; a job with a `run_at` still
ahead is *scheduled* (`rq:scheduled:<queue>`; a worker's scheduler process moves it to the queue
when due); a job with dependencies RQ has not finished is *deferred* (RQ's `depends_on`), and
RQ's worker enqueues it when the last of them succeeds.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import Queue
from rq.job import Dependency
from rq.job import JobStatus as RQStatus

from backend.config import Settings
from backend.db import utcnow
from backend.models import JobRow
from backend.queues import LanesJob, make_retry, queue_for

log = logging.getLogger(__name__)


class Enqueueable(Protocol):
    """What putting a job in Redis reads of its row: a `JobRow`, or a new job's values before any ORM
    object is made of them (a batch's, `jobs.submit_batch`)."""

    @property
    def id(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def params(self) -> Any: ...
    @property
    def timeout_s(self) -> int | None: ...
    @property
    def max_retries(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def attempts(self) -> int: ...
    @property
    def webhook_url(self) -> str | None: ...
    @property
    def run_at(self) -> datetime | None: ...
    @property
    def depends_on(self) -> Any | None: ...


#: How often an enqueue transaction is retried while dependencies change under it.
WATCH_ATTEMPTS = 50


def enqueue_row(*, redis: Redis, settings: Settings, row: JobRow, pipeline: Pipeline | None = None) -> None:
    """Put the job that `row` describes in Redis, under the row's id.

    Used for a first submit, a requeue (the row's epoch and attempts so far travel in the job's
    meta, so the worker's writes land on the new run) and the reconciler's repairs. A job hash left
    under the same id is replaced. A row whose `run_at` is still ahead is scheduled; a row whose
    `depends_on` names jobs RQ has not finished is deferred on those (a job RQ no longer knows
    counts as finished, as in RQ); any other row is queued.

    Without a pipeline this is one transaction, retried if a dependency changes meanwhile. With
    one, the commands are only queued on it; a caller that wants the dependency check exact
    WATCHes the dependencies' keys (`LanesJob.key_for(id)`) before its MULTI.
    """
    if pipeline is None:
        enqueue_rows(redis=redis, settings=settings, rows=[row], succeeded=None)
        return
    depends_on = list(row.depends_on or ())
    finished = _finished(redis, depends_on, succeeded=None)
    waiting = [job_id for job_id in depends_on if job_id not in finished]
    _put(queue_for(row.queue, redis), settings, row, pipeline, waiting)


def enqueue_rows(
    *,
    redis: Redis,
    settings: Settings,
    rows: Sequence[Enqueueable],
    succeeded: Collection[str] | None,
    also: Callable[[Pipeline], None] | None = None,
) -> None:
    """Put every row's job in Redis in one MULTI/EXEC transaction.

    `also` adds commands of the caller's to the same transaction (a submit's metrics), so they
    cost no round trip of their own and happen exactly when the jobs are put in.

    The transaction WATCHes the job hashes of the dependencies outside `rows`, so one that
    finishes between the look at its status and the EXEC makes the transaction start over,
    instead of leaving a job deferred on a dependency that will never release it. A dependency
    among `rows` is always waited on. One that RQ no longer knows counts as finished when it is in
    `succeeded` (None: always, RQ's own rule).
    """
    ours = {row.id for row in rows}
    outside = sorted({job_id for row in rows for job_id in row.depends_on or () if job_id not in ours})
    queues: dict[str, Queue] = {}
    with redis.pipeline() as pipe:
        for attempt in itertools.count(1):
            try:
                if outside:
                    pipe.watch(*[LanesJob.key_for(job_id) for job_id in outside])
                finished = _finished(redis, outside, succeeded=succeeded)
                pipe.multi()
                for row in rows:
                    waiting = [job_id for job_id in row.depends_on or () if job_id not in finished]
                    queue = queues.get(row.queue)
                    if queue is None:  # one Queue per name: building one costs more than a job
                        queue = queues[row.queue] = queue_for(row.queue, redis)
                    _put(queue, settings, row, pipe, waiting)
                if also is not None:
                    also(pipe)
                pipe.execute()
                return
            except WatchError:
                if attempt >= WATCH_ATTEMPTS:
                    raise
                log.debug("enqueue of %d job(s): a dependency changed, trying again", len(rows))


def _finished(redis: Redis, job_ids: Sequence[str], *, succeeded: Collection[str] | None) -> set[str]:
    """Which of `job_ids` RQ has finished (or has forgotten and `succeeded` names)."""
    if not job_ids:
        return set()
    with redis.pipeline(transaction=False) as reads:
        for job_id in job_ids:
            reads.hget(LanesJob.key_for(job_id), "status")
        found = reads.execute()
    finished = set()
    for job_id, raw in zip(job_ids, found, strict=True):
        status = raw.decode() if isinstance(raw, bytes) else raw
        forgotten = status is None and (succeeded is None or job_id in succeeded)
        if status == RQStatus.FINISHED.value or forgotten:
            finished.add(job_id)
    return finished


def _put(queue: Queue, settings: Settings, row: Enqueueable, pipe: Pipeline, waiting: list[str]) -> None:
    """Queue the commands that put `row`'s job in Redis on `pipe`: scheduled, deferred or queued."""
    job = queue.create_job(
        row.task,
        kwargs=row.params or {},
        job_id=row.id,
        timeout=row.timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.failure_ttl_s,
        retry=make_retry(row.max_retries, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s),
        meta={
            "max_retries": row.max_retries,
            "epoch": row.epoch or 0,
            "attempts_base": row.attempts or 0,
            # The worker emits an end event only for jobs that have a webhook (no SQL read for the rest).
            **({"webhook": True} if row.webhook_url else {}),
        },
        depends_on=Dependency(waiting) if waiting else None,
    )
    if row.run_at is not None and row.run_at > utcnow():
        # RQ keeps whole seconds and would truncate: round up, so the job never runs early.
        due = row.run_at
        if due.microsecond:
            due = due.replace(microsecond=0) + timedelta(seconds=1)
        queue.schedule_job(job, due, pipeline=pipe)
    elif waiting:
        # RQ's own deferral (`Queue.setup_dependencies`), on the caller's transaction.
        job.set_status(RQStatus.DEFERRED, pipeline=pipe)
        job.register_dependency(pipeline=pipe)
        job.save(pipeline=pipe)
        job.cleanup(ttl=job.ttl, pipeline=pipe)
        pipe.sadd(queue.redis_queues_keys, queue.key)
    else:
        queue.enqueue_job(job, pipeline=pipe)
