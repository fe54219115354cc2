"""Jobs: submit (one or a batch), read, list and count. The domain, with no FastAPI in it.

Submit order: the SQL rows are committed first (`queued`, or `scheduled` while a job waits for its
`run_at` or its dependencies), then the jobs are put in Redis in one transaction
(`backend.enqueue`). If Redis refuses, the rows are marked `failed` with the reason, their quota
credits are given back, and `BackendUnavailable` is raised, so no row claims to be waiting for a
job that never reached Redis, and no job runs without a row. The credits are taken in the rows'
transaction (`backend.quotas`). What each control accepts is in `backend.job_requests`.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Row, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend import counts, dependencies, idempotency, metrics, pages, quotas
from backend.config import Settings
from backend.db import utcnow
from backend.enqueue import Enqueueable, enqueue_rows
from backend.enqueue import enqueue_row as enqueue_row  # re-exported: requeue and the reconciler use it
from backend.enums import QUEUE_ORDER, JobStatus, Priority
from backend.errors import BackendUnavailable, InvalidInput, NotFound
from backend.job_requests import MAX_BATCH_JOBS, JobRequest, new_row_values
from backend.models import JobRow
from backend.tasks import TaskRegistry

log = logging.getLogger(__name__)

#: Every column of a job's row, None: what a batch's answer shows where `new_row_values` sets nothing.
_UNSET_COLUMNS: dict[str, Any] = dict.fromkeys(column.key for column in JobRow.__table__.columns)


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    task: str | None = None
    priority: Priority | None = None


@dataclass(frozen=True)
class Submission:
    """A submitted job's row, and whether it is an earlier job replayed for an idempotency key."""

    row: JobRow
    replayed: bool = False


def new_job_id() -> str:
    return uuid.uuid4().hex


def submit(
    *,
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    request: JobRequest,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    now: datetime | None = None,
) -> Submission:
    """Validate, take a quota credit, write the row, enqueue. Raises AppError subclasses.

    With an `idempotency_key` that a live job already holds, that job comes back (`replayed`) if
    the request is the same, and nothing is written or enqueued; a different request raises
    `Conflict` (`idempotency_conflict`). Of concurrent submits with one key, one makes the job.
    Keys, dependencies, the new row and the credit belong to `tenant_id`; `now` (the clock's time
    by default) is the row's `created_at` and picks the quota's day and month.
    """
    now = now or utcnow()
    digest = None
    if idempotency_key is not None:
        idempotency.check_key(idempotency_key)
        digest = idempotency.body_hash(request.canonical())
    try:
        if idempotency_key is not None and digest is not None:
            first = idempotency.find_replay(
                session=session, key=idempotency_key, digest=digest, now=now, tenant_id=tenant_id
            )
            if first is not None:
                return Submission(first, replayed=True)
        statuses = dependencies.statuses_of(session, request.depends_on, tenant_id)
        row = JobRow(
            **new_row_values(
                settings, tasks, request, now=now, statuses=statuses, earlier=(), job_id=new_job_id()
            ),
            tenant_id=tenant_id,
        )
        if idempotency_key is not None:
            row.idempotency_key = idempotency_key
            row.idempotency_hash = digest
            row.idempotency_expires_at = now + timedelta(seconds=settings.idempotency_ttl_s)
        session.add(row)
        charge = quotas.take(session=session, settings=settings, tenant_id=tenant_id, jobs=1, now=now)
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None or digest is None:
            raise
        # Another submit with this key committed first: its job is the answer, and this one
        # enqueues nothing.
        first = idempotency.find_replay(
            session=session, key=idempotency_key, digest=digest, now=utcnow(), tenant_id=tenant_id
        )
        if first is None:
            raise
        return Submission(first, replayed=True)
    except BaseException:
        session.rollback()  # nothing half-done (an expired key's release) may be left pending
        raise
    _enqueue_or_fail(session, redis, settings, [row], statuses, charge)
    return Submission(row)


def submit_job(
    *,
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    task: str,
    params: dict[str, Any],
    priority: Priority | None = None,
    max_retries: int | None = None,
) -> JobRow:
    """Submit one job now, without the job controls; the row (see `submit`)."""
    request = JobRequest(task=task, params=params, priority=priority, max_retries=max_retries)
    return submit(session=session, redis=redis, settings=settings, tasks=tasks, request=request).row


def submit_batch(
    *,
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    requests: Sequence[JobRequest],
    tenant_id: str | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Submit up to `MAX_BATCH_JOBS` jobs all or none; their rows' values by column, in the order given.

    Every request is validated before anything is written; the first bad one raises
    `InvalidInput` (`invalid_batch_item`, detail `{"index", "code", "errors"}`). The rows are
    written in one SQL transaction and the jobs put in Redis in one transaction. A job may wait
    on earlier jobs of the batch (`depends_on_items`). The batch takes one quota credit a job, all
    or none (`QuotaExceeded`).
    """
    if not 1 <= len(requests) <= MAX_BATCH_JOBS:
        raise InvalidInput(
            f"a batch holds 1 to {MAX_BATCH_JOBS} jobs, not {len(requests)}", code="invalid_jobs"
        )
    now = now or utcnow()
    statuses = dependencies.statuses_of(
        session, (d for request in requests for d in request.depends_on), tenant_id
    )
    # Plain values, written with one INSERT: a `JobRow` of each, and the flush, were a fifth of a batch.
    # As attributes for the enqueue (`Enqueueable`); a column they leave out takes its default.
    rows: list[SimpleNamespace] = []
    for index, request in enumerate(requests):
        try:
            values = new_row_values(
                settings, tasks, request, now=now, statuses=statuses, earlier=rows, job_id=new_job_id()
            )
        except InvalidInput as exc:
            raise InvalidInput(
                {"index": index, "code": exc.code, "errors": exc.detail}, code="invalid_batch_item"
            ) from exc
        rows.append(SimpleNamespace(**values, tenant_id=tenant_id))
    try:
        session.execute(insert(JobRow), [vars(row) for row in rows])
        charge = quotas.take(session=session, settings=settings, tenant_id=tenant_id, jobs=len(rows), now=now)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    cancelled = _enqueue_or_fail(session, redis, settings, rows, statuses, charge)
    # A dependency that ended while the batch was written cancelled some: those rows are read again.
    query = select(JobRow).where(JobRow.id.in_(cancelled))
    changed = {row.id: row for row in session.scalars(query)} if cancelled else {}
    return [
        _values_of(changed[row.id]) if row.id in changed else {**_UNSET_COLUMNS, **vars(row)} for row in rows
    ]


def _values_of(row: JobRow) -> dict[str, Any]:
    return {key: getattr(row, key) for key in _UNSET_COLUMNS}


def _enqueue_or_fail(
    session: Session,
    redis: Redis,
    settings: Settings,
    rows: Sequence[Enqueueable],
    statuses: dict[str, JobStatus],
    charge: quotas.Charge | None,
) -> set[str]:
    """Put committed rows' jobs in Redis, or mark them failed, give their credits back and raise
    `BackendUnavailable`. The ids of the rows cancelled meanwhile because a dependency ended."""
    succeeded = {job_id for job_id, status in statuses.items() if status == JobStatus.SUCCEEDED}
    submitted = metrics.Tally()  # counted in the jobs' own transaction: no round trip of its own
    for task, count in Counter(row.task for row in rows).items():
        submitted.count("lanes_jobs_submitted", {"task": task}, count)
    try:
        enqueue_rows(redis=redis, settings=settings, rows=rows, succeeded=succeeded, also=submitted.queue_on)
    except RedisError as exc:
        log.warning("%d job(s) not enqueued, Redis refused: %s", len(rows), exc)
        _mark_not_enqueued(session, rows, f"not enqueued: Redis unavailable ({type(exc).__name__})", charge)
        raise BackendUnavailable(
            "Redis is unavailable; the job was not queued"
            if len(rows) == 1
            else "Redis is unavailable; none of the jobs was queued",
            code="redis_unavailable",
        ) from exc
    return _cancel_if_dependency_ended(session, redis, rows)


def _cancel_if_dependency_ended(session: Session, redis: Redis, rows: Sequence[Enqueueable]) -> set[str]:
    """Close the gap between checking a dependency and waiting on it.

    A dependency that failed or was cancelled after the check, before these rows were committed,
    found no dependents to cancel: cancel them now (`cancel_dependents` does nothing twice).
    """
    ours = {row.id for row in rows}
    outside = sorted({job_id for row in rows for job_id in row.depends_on or () if job_id not in ours})
    if not outside:
        return set()
    try:
        cancelled = set(
            dependencies.cancel_dependents_of_ended(session=session, redis=redis, job_ids=outside)
        )
        for row in rows:
            if row.id in cancelled and isinstance(row, JobRow):
                session.refresh(row)
        return cancelled & ours
    except Exception:  # the jobs are accepted; the worker's cascade or the reconciler finishes this
        session.rollback()
        log.exception("could not check the dependencies of %d new job(s) again", len(rows))
        return set()


def _mark_not_enqueued(
    session: Session, rows: Sequence[Enqueueable], reason: str, charge: quotas.Charge | None
) -> None:
    """Rows whose jobs Redis refused become `failed`, give up their idempotency keys and their credits."""
    now = utcnow()
    ids = [row.id for row in rows]
    try:
        for start in range(0, len(ids), 500):
            session.execute(
                update(JobRow)
                .where(
                    JobRow.id.in_(ids[start : start + 500]),
                    JobRow.status.in_([JobStatus.QUEUED.value, JobStatus.SCHEDULED.value]),
                )
                .values(
                    status=JobStatus.FAILED.value,
                    error=reason,
                    finished_at=now,
                    updated_at=now,
                    idempotency_key=None,
                )
                .execution_options(synchronize_session=False)
            )
        quotas.give_back(session=session, charge=charge)
        session.commit()
    except Exception:  # the caller answers 503 either way; the reconciler sees the rows
        session.rollback()
        log.exception("could not mark %d row(s) failed after Redis refused them", len(ids))


def get_job(*, session: Session, job_id: str, tenant_id: str | None = None) -> JobRow:
    """The job's row; `NotFound` if there is none, or it is not `tenant_id`'s (when given)."""
    row = session.get(JobRow, job_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFound(f"job {job_id!r} not found", code="job_not_found")
    return row


#: What a page of jobs reads of each row: every column but the bookkeeping no reader is shown.
LISTED = tuple(
    column
    for column in JobRow.__table__.columns
    if column.key not in {"epoch", "idempotency_hash", "idempotency_expires_at", "updated_at"}
)


def listed(row: JobRow | Row[Any]) -> dict[str, Any]:
    """The `LISTED` columns of a row, by name: a page's plain row, or one ORM object."""
    if isinstance(row, Row):
        return row._asdict()
    return {column.key: getattr(row, column.key) for column in LISTED}


def list_jobs(
    *,
    session: Session,
    filters: JobFilter,
    limit: int,
    cursor: str | None = None,
    tenant_id: str | None = None,
) -> tuple[list[Row[Any]], str | None]:
    """Newest first, one page of `limit` rows and the cursor of the next page (keyset pagination).

    The rows are plain rows of the `LISTED` columns, not ORM objects: a page of 200 is read in
    about half the time, with no identity map or attribute instrumentation to fill."""
    query = select(*LISTED)
    if tenant_id is not None:
        query = query.where(JobRow.tenant_id == tenant_id)
    if filters.status is not None:
        query = query.where(JobRow.status == filters.status.value)
    if filters.task is not None:
        query = query.where(JobRow.task == filters.task)
    if filters.priority is not None:
        query = query.where(JobRow.priority == filters.priority.value)
    return pages.page(session, query, JobRow, limit=limit, cursor=cursor, scalars=False)


def job_stats(*, session: Session, tenant_id: str | None = None) -> dict[str, Any]:
    """Counts by status, overall and per queue, every status present (zeros included).

    Read from the counts the database keeps (`backend.counts`), never by counting rows."""
    queues: dict[str, dict[str, Any]] = {q.value: _empty_stats() for q in QUEUE_ORDER}
    overall = _empty_stats()
    for queue, status, count in counts.counts(session, tenant_id=tenant_id):
        bucket = queues.setdefault(queue, _empty_stats())
        for stats in (bucket, overall):
            stats["by_status"][status] = stats["by_status"].get(status, 0) + count
            stats["total"] += count
    return {**overall, "queues": queues}


def _empty_stats() -> dict[str, Any]:
    return {"total": 0, "by_status": {status.value: 0 for status in JobStatus}}
