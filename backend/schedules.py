"""Schedules: cron rows that run a task again and again. The domain, with no FastAPI in it.

A schedule names a task, its params, priority and retry policy (validated exactly like a job
submit, by `backend.job_requests.new_row_values`), a five-field cron expression and an IANA time zone
(`backend.cron`: fire times in the schedule's own zone, daylight saving included).

`next_run_at` is stored on create and on every change (None while disabled). Every change is
written through to the schedule's rq-scheduler entry in Redis at once (`backend.schedule_entries`);
the scheduler daemon fires due schedules (`backend.firing`) and re-syncs the entries from SQL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from sqlalchemy import Row, or_, select, update
from sqlalchemy.orm import Session

from backend import jobs, pages
from backend.config import Settings
from backend.cron import next_run_at, validate_cron, validate_timezone
from backend.db import utcnow
from backend.enums import Priority
from backend.errors import NotFound
from backend.firing import job_request
from backend.job_requests import JobRequest, new_row_values
from backend.models import JobRow, ScheduleRow
from backend.schedule_entries import write_through
from backend.tasks import TaskRegistry
from backend.webhook_urls import Allowance, check_url


@dataclass(frozen=True)
class ScheduleChanges:
    """What a PATCH changes: every field left None stays as it is."""

    name: str | None = None
    enabled: bool | None = None
    cron: str | None = None
    timezone: str | None = None
    params: dict[str, Any] | None = None
    priority: Priority | None = None
    max_retries: int | None = None
    #: A new webhook URL for the jobs it fires; "" removes it.
    webhook_url: str | None = None


def new_schedule_id() -> str:
    return uuid.uuid4().hex


# -- create, read, update, delete ----------------------------------------------------------------


def create_schedule(
    *,
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    name: str,
    task: str,
    cron: str,
    params: dict[str, Any] | None = None,
    timezone: str = "UTC",
    priority: Priority | None = None,
    max_retries: int | None = None,
    enabled: bool = True,
    created_by: str | None = None,
    tenant_id: str | None = None,
    webhook_url: str | None = None,
) -> ScheduleRow:
    """Validate and store a schedule, with its `next_run_at`, and write its entry; raises `InvalidInput`."""
    _check_webhook(settings, webhook_url)
    cron = validate_cron(cron)
    timezone = validate_timezone(timezone)
    task_name, clean_params, clean_priority, clean_retries = _validated_job(
        settings, tasks, task=task, params=params or {}, priority=priority, max_retries=max_retries
    )
    now = utcnow()
    row = ScheduleRow(
        id=new_schedule_id(),
        tenant_id=tenant_id,
        name=name,
        task=task_name,
        params=clean_params,
        priority=clean_priority,
        max_retries=clean_retries,
        cron=cron,
        timezone=timezone,
        enabled=enabled,
        created_at=now,
        updated_at=now,
        created_by=created_by,
        webhook_url=webhook_url or None,
    )
    row.next_run_at = next_run_at(row, now)
    session.add(row)
    session.commit()
    write_through(redis, row, schedule_id=row.id)
    return row


def get_schedule(*, session: Session, schedule_id: str, tenant_id: str | None = None) -> ScheduleRow:
    """The schedule's row; `NotFound` if there is none, or it is not `tenant_id`'s (when given)."""
    row = session.get(ScheduleRow, schedule_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFound(f"schedule {schedule_id!r} not found", code="schedule_not_found")
    return row


def list_schedules(
    *, session: Session, limit: int, cursor: str | None = None, tenant_id: str | None = None
) -> tuple[list[ScheduleRow], str | None]:
    """Newest first, one page of `limit` rows and the cursor of the next page (keyset pagination)."""
    query = select(ScheduleRow)
    if tenant_id is not None:
        query = query.where(ScheduleRow.tenant_id == tenant_id)
    return pages.page(session, query, ScheduleRow, limit=limit, cursor=cursor)


def update_schedule(
    *,
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    schedule_id: str,
    changes: ScheduleChanges,
    tenant_id: str | None = None,
) -> ScheduleRow:
    """Apply `changes` (all validated before any is applied) and write the entry through.

    `next_run_at` is recomputed from now when the cron, the time zone or `enabled` changes, and
    kept otherwise, so renaming a schedule a moment before it is due does not skip that firing.
    """
    row = get_schedule(session=session, schedule_id=schedule_id, tenant_id=tenant_id)
    _check_webhook(settings, changes.webhook_url)
    cron = row.cron if changes.cron is None else validate_cron(changes.cron)
    timezone = row.timezone if changes.timezone is None else validate_timezone(changes.timezone)
    _, params, priority, max_retries = _validated_job(
        settings,
        tasks,
        task=row.task,
        params=row.params if changes.params is None else changes.params,
        priority=Priority(row.priority) if changes.priority is None else changes.priority,
        max_retries=row.max_retries if changes.max_retries is None else changes.max_retries,
    )
    now = utcnow()
    enabled = row.enabled if changes.enabled is None else changes.enabled
    when_changes = (cron, timezone, enabled) != (row.cron, row.timezone, row.enabled)
    row.cron, row.timezone, row.enabled = cron, timezone, enabled
    row.params, row.priority, row.max_retries = params, priority, max_retries
    if changes.name is not None:
        row.name = changes.name
    if changes.webhook_url is not None:
        row.webhook_url = changes.webhook_url or None
    if when_changes or (row.enabled and row.next_run_at is None):
        row.next_run_at = next_run_at(row, now)
    row.updated_at = now
    session.commit()
    write_through(redis, row, schedule_id=row.id)
    return row


def delete_schedule(
    *, session: Session, redis: Redis, schedule_id: str, tenant_id: str | None = None
) -> None:
    """Delete a schedule and its entry; the jobs it fired keep their rows (and `schedule_id`)."""
    row = get_schedule(session=session, schedule_id=schedule_id, tenant_id=tenant_id)
    session.delete(row)
    session.commit()
    write_through(redis, None, schedule_id=schedule_id)


# -- firing by hand, and what a schedule fired ----------------------------------------------------


def run_now(
    *,
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    schedule_id: str,
    tenant_id: str | None = None,
    now: datetime | None = None,
) -> JobRow:
    """Fire a schedule now, enabled or not, as a job of its own; its cron times are not changed.

    The job is submitted like any other (row first, then Redis; `BackendUnavailable` if Redis
    refuses) with `schedule_id` set, and takes a quota credit of the schedule's tenant
    (`QuotaExceeded` when it has none left). The schedule's `last_run_at` becomes now.
    """
    row = get_schedule(session=session, schedule_id=schedule_id, tenant_id=tenant_id)
    request = job_request(row)
    job = jobs.submit(
        session=session,
        redis=redis,
        settings=settings,
        tasks=tasks,
        request=request,
        tenant_id=row.tenant_id,
        now=now,
    ).row
    session.execute(
        update(ScheduleRow)
        .where(
            ScheduleRow.id == row.id,
            or_(ScheduleRow.last_run_at.is_(None), ScheduleRow.last_run_at < job.created_at),
        )
        .values(last_run_at=job.created_at, updated_at=ScheduleRow.updated_at)
    )
    session.commit()
    return job


def last_jobs(*, session: Session, schedule_ids: list[str]) -> dict[str, JobRow]:
    """The newest job each schedule fired (by hand or on time), for the schedules that fired any.

    One look-up per schedule at the newest end of `ix_jobs_schedule_created`, however many jobs
    each has fired."""
    if not schedule_ids:
        return {}
    newest = (
        select(JobRow.id)
        .where(JobRow.schedule_id == ScheduleRow.id)
        .order_by(JobRow.created_at.desc(), JobRow.id.desc())
        .limit(1)
        .correlate(ScheduleRow)
        .scalar_subquery()
    )
    query = select(JobRow).where(JobRow.id.in_(select(newest).where(ScheduleRow.id.in_(schedule_ids))))
    return {row.schedule_id: row for row in session.scalars(query) if row.schedule_id is not None}


def list_schedule_jobs(
    *, session: Session, schedule_id: str, limit: int, cursor: str | None = None, tenant_id: str | None = None
) -> tuple[list[Row[Any]], str | None]:
    """The jobs a schedule has fired, newest first, a page at a time (plain rows, as
    `jobs.list_jobs` gives); `NotFound` for no schedule."""
    get_schedule(session=session, schedule_id=schedule_id, tenant_id=tenant_id)
    query = select(*jobs.LISTED).where(JobRow.schedule_id == schedule_id)
    return pages.page(session, query, JobRow, limit=limit, cursor=cursor, scalars=False)


def _validated_job(
    settings: Settings,
    tasks: TaskRegistry,
    *,
    task: str,
    params: dict[str, Any],
    priority: Priority | None,
    max_retries: int | None,
) -> tuple[str, dict[str, Any], str, int]:
    """Task name, params, priority and max_retries as a submit of them would store them.

    Goes through the submit's own validation, so a schedule refuses exactly what a submit refuses
    (`unknown_task`, `invalid_params`, `invalid_max_retries`).
    """
    request = JobRequest(task=task, params=params, priority=priority, max_retries=max_retries)
    probe = new_row_values(
        settings, tasks, request, now=utcnow(), statuses={}, earlier=(), job_id="schedule-probe"
    )
    return probe["task"], probe["params"], probe["priority"], probe["max_retries"]


def _check_webhook(settings: Settings, url: str | None) -> None:
    """A schedule's webhook URL is checked as a submit's is (and again at each send)."""
    if url:
        check_url(url, allow=Allowance.parse(settings.webhook_allow))
