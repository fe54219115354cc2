"""Job control: cancel and requeue, one job or many. The domain, with no FastAPI in it.

Cancelling races the workers, so both sides decide through Redis atomically:

- A cancel first sets the job's cancel flag (`lanes:cancel:<id>`), then, if the job is still
  waiting (queued, scheduled, deferred), cancels it in RQ inside a WATCH transaction on the job
  hash. A worker claims a job before it forks (`CLAIM_SCRIPT`): it refuses a job whose hash says
  `canceled` or whose flag is set, and otherwise marks it started. Whichever goes first wins; the
  other sees it. The work-horse checks the flag once more after RQ has registered it, which closes
  the last gap (a stop command sent before the horse exists is ignored by RQ).
- A job that is already running is stopped with RQ's stop command and ends `cancelled` when its
  worker reports it; if it finished first, it stays finished and the cancel answers 409.

A requeue opens the row's next epoch (so nothing about the earlier run can apply any more),
commits it as `queued`, and enqueues the job again under the same id, attempts continuing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, WatchError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer
from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from backend import dependencies, mirror, observe, quotas, webhooks
from backend.config import Settings
from backend.db import utcnow
from backend.enums import TERMINAL_STATUSES, JobStatus, Priority
from backend.errors import BackendUnavailable, Conflict, NotFound, QuotaExceeded
from backend.jobs import enqueue_row, get_job
from backend.models import JobRow, WebhookDeliveryRow
from backend.queues import CANCEL_FLAG_TTL_S, LanesJob, cancel_flag_key
from backend.sync import sync_from_rq

log = logging.getLogger(__name__)

BULK_LIMIT = 1000
WAITING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RETRYING)
REQUEUEABLE = (JobStatus.FAILED, JobStatus.CANCELLED)
_RQ_WAITING = {RQStatus.QUEUED.value, RQStatus.SCHEDULED.value, RQStatus.DEFERRED.value}

#: Run by a worker before it starts a job: 1 if the job is now claimed as started, 0 if it was
#: cancelled. It also renews the worker's alive key (KEYS[3], value ARGV[2], for ARGV[3] seconds):
#: an idle worker beats only once a poll, and its new job must not look abandoned.
CLAIM_SCRIPT = """
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == false or status == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'started', 'worker_name', ARGV[1])
return 1
"""


# -- cancel -------------------------------------------------------------------------------------


def cancel_job(
    *,
    session: Session,
    redis: Redis,
    job_id: str,
    by: str = "api",
    wait_s: float = 0.0,
    tenant_id: str | None = None,
    settings: Settings | None = None,
) -> tuple[JobRow, bool]:
    """Cancel one job; the row afterwards and whether it is final (False: still stopping).

    Raises NotFound (also for another tenant's job), and Conflict (code `job_finished`) when the
    job had already ended. With `settings`, a job cancelled here emits its `job.cancelled` webhook
    (a running job's worker emits its own when it stops).
    """
    row = get_job(session=session, job_id=job_id, tenant_id=tenant_id)
    _refuse_if_finished(row)
    try:
        redis.set(cancel_flag_key(job_id), by, ex=CANCEL_FLAG_TTL_S)
        outcome = _cancel_in_rq(redis, job_id)
    except RedisError as exc:
        raise BackendUnavailable(
            "Redis is unavailable; the job was not cancelled", code="redis_unavailable"
        ) from exc

    if outcome == "cancelled" or outcome == "missing":
        _mark_cancelled(session, row, by=by, reason=f"cancelled by {by}")
        _cancel_dependents(session, redis, job_id)
        if settings is not None:
            webhooks.emit_quietly(session=session, redis=redis, settings=settings, job_ids=[job_id])
        return _fresh(session, job_id), True
    if outcome == "running":
        # It may end between our look and the command; the wait below sees how.
        with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
            send_stop_job_command(redis, job_id, serializer=JSONSerializer)
        return _await_outcome(session, redis, job_id, by=by, wait_s=wait_s)
    # RQ already finished it; the row lags behind. Bring it up to date and say so.
    sync_from_rq(session, redis, job_id)
    session.commit()
    row = _fresh(session, job_id)
    _refuse_if_finished(row)
    return row, False


def _refuse_if_finished(row: JobRow) -> None:
    if JobStatus(row.status) in TERMINAL_STATUSES:
        raise Conflict(
            {"message": f"job {row.id} has already ended: {row.status}", "status": row.status},
            code="job_finished",
        )


def _cancel_in_rq(redis: Redis, job_id: str) -> str:
    """Cancel a waiting job in RQ atomically; else say where it is (running, finished, missing)."""
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(f"rq:job:{job_id}")
                raw = pipe.hget(f"rq:job:{job_id}", "status")
                if raw is None:
                    return "missing"
                status = raw.decode() if isinstance(raw, bytes) else str(raw)
                if status not in _RQ_WAITING:
                    if status == RQStatus.CANCELED.value:
                        return "cancelled"
                    return "running" if status == RQStatus.STARTED.value else "finished"
                job = LanesJob.fetch(job_id, connection=redis)
                pipe.multi()
                job.cancel(pipeline=pipe)
                pipe.execute()
                return "cancelled"
            except WatchError:
                continue


def _mark_cancelled(session: Session, row: JobRow, *, by: str, reason: str) -> None:
    mirror.cancel(session, row, by=by, reason=reason)
    session.commit()


def _cancel_dependents(session: Session, redis: Redis, job_id: str) -> None:
    # A stopped running job cascades from its worker; a waiting one cascades here. The cancel
    # itself stands whatever happens now; the reconciler repairs a cascade cut short.
    try:
        dependencies.cancel_dependents(session=session, redis=redis, job_id=job_id, reason="was cancelled")
    except (RedisError, SQLAlchemyError):
        session.rollback()
        log.exception("job %s: cancelled, but cancelling the jobs waiting on it failed", job_id)


def _await_outcome(
    session: Session, redis: Redis, job_id: str, *, by: str, wait_s: float
) -> tuple[JobRow, bool]:
    """Wait (bounded) for the worker to report how a stopped job ended."""
    deadline = time.monotonic() + wait_s
    while True:
        row = _fresh(session, job_id)
        if JobStatus(row.status) in TERMINAL_STATUSES:
            break
        if time.monotonic() >= deadline:
            return row, False
        time.sleep(0.05)
    if row.status == JobStatus.CANCELLED.value:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.cancelled_by.is_(None))
            .values(cancelled_by=by, cancelled_at=row.cancelled_at or utcnow())
        )
        session.commit()
        return _fresh(session, job_id), True
    _refuse_if_finished(row)  # it finished before the stop reached it
    return row, True


def _fresh(session: Session, job_id: str) -> JobRow:
    session.expire_all()
    row = session.get(JobRow, job_id)
    if row is None:
        raise NotFound(f"job {job_id!r} not found", code="job_not_found")
    return row


@dataclass
class BulkReport:
    """What a bulk action did: ids done, ids still in progress, and ids refused with the reason."""

    done: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Selection:
    """Which jobs a bulk action applies to: explicit ids, or a filter."""

    ids: list[str] | None = None
    status: JobStatus | None = None
    task: str | None = None
    priority: Priority | None = None
    limit: int = BULK_LIMIT
    #: Only this tenant's jobs (None: every tenant's, for a platform admin).
    tenant_id: str | None = None


def select_ids(session: Session, selection: Selection, *, statuses: tuple[JobStatus, ...]) -> list[str]:
    """Ids of rows matching a filter, limited to `statuses`, oldest first, at most `limit`."""
    wanted = [s.value for s in statuses if selection.status in (None, s)]
    query = select(JobRow.id).where(JobRow.status.in_(wanted))
    if selection.tenant_id is not None:
        query = query.where(JobRow.tenant_id == selection.tenant_id)
    if selection.task is not None:
        query = query.where(JobRow.task == selection.task)
    if selection.priority is not None:
        query = query.where(JobRow.priority == selection.priority.value)
    query = query.order_by(JobRow.created_at, JobRow.id).limit(selection.limit)
    return list(session.scalars(query))


def cancel_many(
    *, session: Session, redis: Redis, selection: Selection, by: str = "api", settings: Settings | None = None
) -> BulkReport:
    """Cancel each selected job; running ones are sent the stop command and reported in progress."""
    statuses = (*WAITING, JobStatus.STARTED)
    ids = selection.ids if selection.ids is not None else select_ids(session, selection, statuses=statuses)
    report = BulkReport()
    for job_id in dict.fromkeys(ids):
        try:
            row, final = cancel_job(
                session=session,
                redis=redis,
                job_id=job_id,
                by=by,
                wait_s=0,
                tenant_id=selection.tenant_id,
                settings=settings,
            )
        except NotFound:
            report.refused.append({"id": job_id, "reason": "not found"})
        except Conflict as exc:
            report.refused.append({"id": job_id, "reason": "already ended", "status": exc.detail["status"]})
        else:
            (report.done if final else report.in_progress).append(row.id)
    return report


def empty_queue(
    *, session: Session, redis: Redis, queue: str, by: str, settings: Settings | None = None
) -> BulkReport:
    """Cancel every job waiting on a job queue, as a bulk cancel of their ids (any tenant's)."""
    ids = observe.queued_ids(redis, queue)
    return cancel_many(session=session, redis=redis, selection=Selection(ids=ids), by=by, settings=settings)


# -- requeue ------------------------------------------------------------------------------------


def requeue_job(
    *,
    session: Session,
    redis: Redis,
    settings: Settings,
    job_id: str,
    tenant_id: str | None = None,
    now: datetime | None = None,
) -> JobRow:
    """Run a failed or cancelled job again under the same id; attempts continue.

    A retry asked for is a new run: it takes a quota credit from the job's tenant, at `now`.
    Raises NotFound, Conflict (code `not_requeueable`) unless the job is failed or cancelled,
    QuotaExceeded when the job's tenant has no credit left, and BackendUnavailable when Redis
    refuses (the row then says why, and stays requeueable; the credit is given back).
    """
    row = get_job(session=session, job_id=job_id, tenant_id=tenant_id)
    if row.status not in {s.value for s in REQUEUEABLE}:
        raise Conflict(
            {
                "message": f"only failed or cancelled jobs can be retried; job {job_id} is {row.status}",
                "status": row.status,
            },
            code="not_requeueable",
        )
    now = now or utcnow()
    waits = bool(row.depends_on) or (row.run_at is not None and row.run_at > now)
    moved = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.epoch == row.epoch, JobRow.status == row.status)
        .values(
            status=(JobStatus.SCHEDULED if waits else JobStatus.QUEUED).value,
            epoch=row.epoch + 1,
            progress=0,
            stage=None,
            result=None,
            error=None,
            traceback=None,
            next_retry_at=None,
            finished_at=None,
            cancelled_at=None,
            cancelled_by=None,
            enqueued_at=now,
            updated_at=now,
            webhook_delivered=None,
            webhook_attempts=0,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    charge = (
        quotas.take(session=session, settings=settings, tenant_id=row.tenant_id, jobs=1, now=now)
        if moved
        else None
    )
    session.commit()
    if not moved:
        raise Conflict(
            {"message": f"job {job_id} changed while it was being retried"}, code="not_requeueable"
        )
    row = _fresh(session, job_id)
    try:
        _forget_in_rq(redis, job_id)
        enqueue_row(redis=redis, settings=settings, row=row)
    except RedisError as exc:
        _mark_requeue_failed(session, row, f"not requeued: Redis unavailable ({type(exc).__name__})", charge)
        raise BackendUnavailable(
            "Redis is unavailable; the job was not requeued", code="redis_unavailable"
        ) from exc
    return row


def _forget_in_rq(redis: Redis, job_id: str) -> None:
    """Drop RQ's record of the earlier run (registries, hash) and the cancel flag."""
    redis.delete(cancel_flag_key(job_id))
    with contextlib.suppress(NoSuchJobError):
        LanesJob.fetch(job_id, connection=redis).delete(remove_from_queue=True)


def _mark_requeue_failed(session: Session, row: JobRow, reason: str, charge: quotas.Charge | None) -> None:
    """The requeue Redis refused: the row is `failed` again, saying why, and the credit goes back."""
    try:
        mirror.advance(
            session,
            job_id=row.id,
            status=JobStatus.FAILED,
            attempt=row.attempts,
            epoch=row.epoch,
            values={"error": reason, "finished_at": utcnow()},
        )
        quotas.give_back(session=session, charge=charge)
        session.commit()
    except Exception:
        session.rollback()
        log.exception("job %s: could not record that the requeue failed", row.id)


def requeue_many(
    *, session: Session, redis: Redis, settings: Settings, selection: Selection, now: datetime | None = None
) -> BulkReport:
    """Requeue each selected failed (by default) or cancelled job: the dead letter, drained on purpose.

    Each takes a quota credit from its tenant; a job whose tenant has none left is refused ("over quota").
    """
    default = (JobStatus.FAILED,) if selection.status is None else REQUEUEABLE
    ids = selection.ids if selection.ids is not None else select_ids(session, selection, statuses=default)
    report = BulkReport()
    for job_id in dict.fromkeys(ids):
        try:
            requeue_job(
                session=session,
                redis=redis,
                settings=settings,
                job_id=job_id,
                tenant_id=selection.tenant_id,
                now=now,
            )
        except QuotaExceeded:
            report.refused.append({"id": job_id, "reason": "over quota"})
        except NotFound:
            report.refused.append({"id": job_id, "reason": "not found"})
        except Conflict as exc:
            report.refused.append(
                {"id": job_id, "reason": "not failed or cancelled", "status": exc.detail.get("status")}
            )
        else:
            report.done.append(job_id)
    return report


# -- delete -------------------------------------------------------------------------------------


def delete_job(*, session: Session, redis: Redis, job_id: str) -> None:
    """Delete an ended job's row, its webhook attempts, and RQ's record of it.

    Raises NotFound, and Conflict (`job_not_finished`) for a job that has not ended: cancel it first.
    """
    row = get_job(session=session, job_id=job_id)
    if JobStatus(row.status) not in TERMINAL_STATUSES:
        raise Conflict(
            {"message": f"job {job_id} has not ended: {row.status}; cancel it first", "status": row.status},
            code="job_not_finished",
        )
    _forget_in_rq(redis, job_id)
    session.execute(delete(WebhookDeliveryRow).where(WebhookDeliveryRow.job_id == job_id))
    session.execute(delete(JobRow).where(JobRow.id == job_id, JobRow.status == row.status))
    session.commit()
