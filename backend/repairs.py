"""The reconciler's repairs, one function per kind of damage (see `backend.reconcile`).

Each takes the session of its own transaction and returns the report list the job belongs in
("requeued", "retried", "failed", "synced", "cancelled"), or None when it did nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from redis import Redis
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus as RQStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import mirror
from backend.config import Settings
from backend.db import utcnow
from backend.enums import JobStatus
from backend.jobs import enqueue_row
from backend.models import JobRow
from backend.queues import (
    ALIVE_FIELD,
    LanesJob,
    alive_key,
    attempt_of,
    cancel_flag_key,
    epoch_of,
    queue_for,
    scheduled_at,
)
from backend.sync import sync_from_rq
from backend.whereabouts import Whereabouts, as_text, clear_leftovers

log = logging.getLogger(__name__)

#: The error of a job whose worker died under it.
WORKER_DIED = "worker died"


# -- lagging ---------------------------------------------------------------------------------------


def sync_row(session: Session, redis: Redis, row: JobRow) -> str | None:
    """Bring a lagging row up to RQ's record of its job (`sync_from_rq`); "synced" if it moved."""
    sync_from_rq(session, redis, row.id)
    session.flush()
    after = session.execute(
        select(JobRow.epoch, JobRow.attempts, JobRow.status).where(JobRow.id == row.id)
    ).one_or_none()
    if after is None or tuple(after) == (row.epoch, row.attempts, row.status):
        return None
    log.info("reconcile: job %s row was %s, RQ's record moved it to %s", row.id, row.status, after.status)
    return "synced"


# -- lost ------------------------------------------------------------------------------------------


def put_back(
    session: Session, redis: Redis, settings: Settings, row: JobRow, where: Whereabouts
) -> str | None:
    """Enqueue a lost job again under the row's policy; or cancel it if a cancel is outstanding.

    Nothing happens if the row has moved since it was read (cancelled by a cascade, requeued). On
    PostgreSQL the row stays locked until the repair commits, so a cancel or requeue waits for it.
    """
    if not _unchanged(session, row):
        return None
    stale = where.status is not None and where.epoch < row.epoch  # a requeue died before enqueueing
    flag = redis.get(cancel_flag_key(row.id))
    if flag is not None and not stale:
        by = flag.decode() if isinstance(flag, bytes) else str(flag)
        mirror.cancel(session, row, by=by)
        log.warning("reconcile: job %s was lost with a cancel outstanding; marked cancelled", row.id)
        return "cancelled"

    clear_leftovers(redis, row.queue, row.id)
    if stale:
        redis.delete(cancel_flag_key(row.id))  # it belonged to the run before the requeue
    if row.status in (JobStatus.QUEUED.value, JobStatus.SCHEDULED.value):
        enqueue_row(redis=redis, settings=settings, row=row)
        log.warning(
            "reconcile: job %s was in no queue or registry (RQ: %s); enqueued again", row.id, where.status
        )
        return "requeued"
    if row.status == JobStatus.RETRYING.value:
        enqueue_row(redis=redis, settings=settings, row=_continuing(row))
        log.warning(
            "reconcile: job %s was lost while waiting for attempt %d; enqueued again",
            row.id,
            row.attempts + 1,
        )
        return "requeued"
    return _retry_or_fail(session, redis, settings, row)


def _unchanged(session: Session, row: JobRow) -> bool:
    """Whether the row is still where it was when it was read (locked FOR UPDATE where supported)."""
    now = session.execute(
        select(JobRow.epoch, JobRow.attempts, JobRow.status).where(JobRow.id == row.id).with_for_update()
    ).one_or_none()
    return now is not None and tuple(now) == (row.epoch, row.attempts, row.status)


def _retry_or_fail(session: Session, redis: Redis, settings: Settings, row: JobRow) -> str:
    """A running job RQ lost entirely: its attempt counts; the next one runs if the policy allows."""
    attempt = max(1, row.attempts)
    if attempt < row.max_retries + 1:
        mirror.advance(
            session,
            job_id=row.id,
            status=JobStatus.RETRYING,
            attempt=attempt,
            epoch=row.epoch,
            values=mirror.retrying_values(error=WORKER_DIED, traceback=None, next_retry_at=utcnow()),
        )
        session.commit()  # the row first, then the enqueue, as on submit
        enqueue_row(redis=redis, settings=settings, row=_continuing(row))
        log.warning("reconcile: job %s died in attempt %d and RQ lost it; enqueued again", row.id, attempt)
        return "retried"
    mirror.advance(
        session,
        job_id=row.id,
        status=JobStatus.FAILED,
        attempt=attempt,
        epoch=row.epoch,
        values=mirror.failed_values(error=WORKER_DIED, traceback=None),
    )
    log.warning("reconcile: job %s died in its last attempt (%d) and RQ lost it; failed", row.id, attempt)
    return "failed"


def _continuing(row: JobRow) -> JobRow:
    """The row as `enqueue_row` should see it for the next attempt: only the retries left.

    `enqueue_row` gives a job a fresh retry plan counting from `row.attempts`; a copy whose
    `max_retries` is what is left keeps the job within its policy. Its delay and dependencies were
    met before it first ran, so they are dropped.
    """
    columns = {column.key: getattr(row, column.key) for column in JobRow.__table__.columns}
    columns.update(max_retries=max(0, row.max_retries - max(1, row.attempts)), run_at=None, depends_on=None)
    return JobRow(**columns)


# -- abandoned -------------------------------------------------------------------------------------


def let_rq_clean_up(redis: Redis, queue_name: str, now: datetime) -> list[tuple[str, int]]:
    """RQ's own handling of running jobs whose execution deadline has passed; (id, attempt) of each."""
    registry = StartedJobRegistry(queue_name, connection=redis, job_class=LanesJob, serializer=JSONSerializer)
    expired = registry.get_expired_job_ids(now.timestamp())
    if not expired:
        return []
    queue = queue_for(queue_name, redis)
    if not queue.acquire_maintenance_lock():
        log.info("reconcile: a worker is cleaning queue %s; its abandoned jobs are left to it", queue_name)
        return []
    try:
        abandoned = []
        for job_id in dict.fromkeys(expired):
            try:
                job = LanesJob.fetch(job_id, connection=redis)
            except NoSuchJobError:
                continue
            if job.get_status(refresh=False) == RQStatus.STARTED:
                abandoned.append((job_id, attempt_of(job)))
        registry.cleanup(timestamp=now.timestamp())
    finally:
        queue.release_maintenance_lock()
    for job_id, attempt in abandoned:
        log.warning(
            "reconcile: job %s (attempt %d) outlived its worker; RQ retried or failed it", job_id, attempt
        )
    return abandoned


def free_dead_schedulers(redis: Redis, queue_names: Sequence[str]) -> list[str]:
    """Free the scheduler locks a dead worker held, so a live worker takes over its retries now.

    Each worker's RQ scheduler (named after the worker) holds `rq:scheduler-lock:<queue>`, and
    moves due retries and delayed jobs onto the queue. Killed with its worker, its locks would
    stand for 61 s more. A lock whose holder is a registered worker that stopped beating
    (`lanes:alive:<name>` lapsed) is deleted; a live worker takes it at its next poll.
    """
    keys = [RQScheduler.get_locking_key(name) for name in queue_names]
    holders = [as_text(holder) for holder in redis.mget(keys)]
    freed = []
    for key, holder in zip(keys, holders, strict=True):
        if not holder:
            continue
        with redis.pipeline() as pipe:
            pipe.hexists(f"{Worker.redis_worker_namespace_prefix}{holder}", ALIVE_FIELD)
            pipe.exists(alive_key(holder))
            keeps_alive_key, beating = pipe.execute()
        # Deleted only if it still names the dead worker: a live scheduler may have taken it since.
        if keeps_alive_key and not beating and redis.eval(_DELETE_IF_HOLDER, 1, key, holder):
            log.warning("reconcile: freed %s, held by dead worker %s", key, holder)
            freed.append(key)
    return freed


_DELETE_IF_HOLDER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def abandon(session: Session, redis: Redis, row: JobRow, where: Whereabouts) -> str | None:
    """Retry or fail one running job whose worker is gone, as RQ's registry cleanup would.

    Under the queue's maintenance lock, which RQ's own cleanup takes too, so the two never handle
    the job twice. (No WATCH: RQ's `Job.retry` sets the status outside the caller's pipeline.)
    """
    queue = queue_for(row.queue, redis)
    if not queue.acquire_maintenance_lock():
        return None  # a worker is cleaning this queue right now; the next run looks again
    try:
        job = LanesJob.fetch(row.id, connection=redis)
        if job.get_status(refresh=False) != RQStatus.STARTED:
            return None  # it moved on since the second look
        attempt, retry = attempt_of(job), bool(job.retries_left)
        with redis.pipeline() as pipe:
            if where.executions:
                pipe.zrem(queue.started_job_registry.key, *where.executions)
            if retry:
                job.retry(queue, pipe)
            else:
                reason = f"{WORKER_DIED}: {where.worker or 'no worker'} stopped heartbeating"
                record_job_failure(job, reason, pipe)
            pipe.execute()
        if not retry:
            queue.enqueue_dependents(job, refresh_job_status=False)
    finally:
        queue.release_maintenance_lock()
    log.warning(
        "reconcile: job %s (attempt %d) has no live worker (%s); %s",
        row.id,
        attempt,
        where.worker,
        "retried" if retry else "failed",
    )
    return mirror_abandoned(session, redis, row.id, attempt)


def mirror_abandoned(session: Session, redis: Redis, job_id: str, attempt: int) -> str | None:
    """The row of a job RQ has just retried or failed because its worker died."""
    try:
        job = LanesJob.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return None
    status = job.get_status(refresh=False)
    if status in (RQStatus.SCHEDULED, RQStatus.QUEUED):
        kind, values = (
            "retried",
            mirror.retrying_values(error=WORKER_DIED, traceback=None, next_retry_at=scheduled_at(job, redis)),
        )
        new_status = JobStatus.RETRYING
    elif status == RQStatus.FAILED:
        kind, new_status = "failed", JobStatus.FAILED
        values = mirror.failed_values(error=WORKER_DIED, traceback=None)
    else:
        sync_from_rq(session, redis, job_id)
        return None
    moved = mirror.advance(
        session, job_id=job_id, status=new_status, attempt=attempt, epoch=epoch_of(job), values=values
    )
    if not moved:  # no row yet (a job enqueued behind the API's back): build it from RQ's record
        sync_from_rq(session, redis, job_id)
    return kind
