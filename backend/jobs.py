"""Jobs: submit, read, list and count. The domain, with no FastAPI in it.

Submit order: the SQL row is committed first (status `queued`), then the job is enqueued. If Redis
refuses, the row is marked `failed` with the reason and `BackendUnavailable` is raised, so no row
claims to be queued for a job that never reached Redis, and no job runs without a row.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.db import utcnow
from backend.enums import QUEUE_ORDER, JobStatus, Priority
from backend.errors import BackendUnavailable, InvalidInput, NotFound
from backend.models import JobRow
from backend.queues import make_retry, queue_for
from backend.tasks import TaskRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    task: str | None = None
    priority: Priority | None = None


def new_job_id() -> str:
    return uuid.uuid4().hex


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
    """Validate, write the row, enqueue; the returned row is `queued`. Raises AppError subclasses."""
    spec = tasks.get(task)
    clean_params = spec.validate(params)
    priority = Priority(priority or spec.priority)
    retries = _max_retries(settings, spec.max_retries, max_retries)

    now = utcnow()
    row = JobRow(
        id=new_job_id(),
        task=spec.name,
        queue=priority.value,
        priority=priority.value,
        status=JobStatus.QUEUED.value,
        progress=0,
        params=clean_params,
        attempts=0,
        max_retries=retries,
        timeout_s=spec.timeout_s,
        created_at=now,
        enqueued_at=now,
        updated_at=now,
        webhook_attempts=0,
        epoch=0,
    )
    session.add(row)
    session.commit()

    try:
        enqueue_row(redis=redis, settings=settings, row=row)
    except RedisError as exc:
        log.warning("job %s not enqueued, Redis refused: %s", row.id, exc)
        _mark_not_enqueued(session, row, f"not enqueued: Redis unavailable ({type(exc).__name__})")
        raise BackendUnavailable(
            "Redis is unavailable; the job was not queued", code="redis_unavailable"
        ) from exc
    return row


def enqueue_row(*, redis: Redis, settings: Settings, row: JobRow, pipeline: Pipeline | None = None) -> None:
    """Put the job that `row` describes on its queue, under the row's id.

    Used for a first submit, a requeue (the row's epoch and attempts so far travel in the job's
    meta, so the worker's writes land on the new run) and the reconciler's repairs. A job hash left
    under the same id is replaced. With a pipeline, the commands are only queued on it.
    """
    queue_for(row.queue, redis).enqueue_call(
        row.task,
        kwargs=row.params or {},
        job_id=row.id,
        timeout=row.timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.failure_ttl_s,
        retry=make_retry(row.max_retries, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s),
        meta={"max_retries": row.max_retries, "epoch": row.epoch or 0, "attempts_base": row.attempts or 0},
        pipeline=pipeline,
    )


def _max_retries(settings: Settings, task_default: int | None, asked: int | None) -> int:
    if asked is None:
        return settings.default_max_retries if task_default is None else task_default
    if not 0 <= asked <= settings.max_retries_limit:
        raise InvalidInput(
            f"max_retries must be between 0 and {settings.max_retries_limit}", code="invalid_max_retries"
        )
    return asked


def _mark_not_enqueued(session: Session, row: JobRow, reason: str) -> None:
    try:
        session.execute(
            update(JobRow)
            .where(JobRow.id == row.id, JobRow.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.FAILED.value, error=reason, finished_at=utcnow(), updated_at=utcnow())
        )
        session.commit()
    except Exception:  # the caller answers 503 either way; the reconciler sees the row
        session.rollback()
        log.exception("job %s: could not mark the row failed after Redis refused it", row.id)


def get_job(*, session: Session, job_id: str) -> JobRow:
    row = session.get(JobRow, job_id)
    if row is None:
        raise NotFound(f"job {job_id!r} not found", code="job_not_found")
    return row


def list_jobs(
    *, session: Session, filters: JobFilter, limit: int, cursor: str | None = None
) -> tuple[list[JobRow], str | None]:
    """Newest first, one page of `limit` rows and the cursor of the next page (keyset pagination)."""
    query = select(JobRow)
    if filters.status is not None:
        query = query.where(JobRow.status == filters.status.value)
    if filters.task is not None:
        query = query.where(JobRow.task == filters.task)
    if filters.priority is not None:
        query = query.where(JobRow.priority == filters.priority.value)
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            or_(JobRow.created_at < created_at, and_(JobRow.created_at == created_at, JobRow.id < job_id))
        )
    rows = list(session.scalars(query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def encode_cursor(row: JobRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not job_id:
            raise ValueError("incomplete cursor")
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("cursor is not one this API gave out", code="invalid_cursor") from None
    return created_at, job_id


def job_stats(*, session: Session) -> dict[str, Any]:
    """Counts by status, overall and per queue, every status present (zeros included)."""
    counts = session.execute(
        select(JobRow.queue, JobRow.status, func.count()).group_by(JobRow.queue, JobRow.status)
    ).all()
    queues: dict[str, dict[str, Any]] = {q.value: _empty_stats() for q in QUEUE_ORDER}
    overall = _empty_stats()
    for queue, status, count in counts:
        bucket = queues.setdefault(queue, _empty_stats())
        for stats in (bucket, overall):
            stats["by_status"][status] = stats["by_status"].get(status, 0) + count
            stats["total"] += count
    return {**overall, "queues": queues}


def _empty_stats() -> dict[str, Any]:
    return {"total": 0, "by_status": {status.value: 0 for status in JobStatus}}
