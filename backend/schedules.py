"""Schedules: cron rows that run a task again and again. The domain, with no FastAPI in it.

A schedule names a task, its params, priority and retry policy (validated exactly like a job
submit, by `backend.job_requests.new_row`), a five-field cron expression and an IANA time zone.
Fire times are computed in the schedule's own zone and stored and shown in UTC, whatever the
host's `TZ` is. Around daylight-saving changes:

- spring forward: a time that does not exist that day (02:30) fires at the first minute after
  the gap (03:00), once;
- fall back: a time that happens twice (01:30) fires once, at its first occurrence, unless the
  hour field is `*` (`*/15 * * * *`): such a schedule follows elapsed time and fires in both hours.

`next_run_at` is stored on create and on every change (None while disabled). Firing schedules
is the scheduler daemon's work, not this module's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import pages
from backend.config import Settings
from backend.db import utcnow
from backend.enums import Priority
from backend.errors import InvalidInput, NotFound
from backend.job_requests import JobRequest, new_row
from backend.models import ScheduleRow
from backend.tasks import TaskRegistry

#: A cron expression must match at least once within this many years, or it is refused.
NEVER_FIRES_HORIZON_YEARS = 5
#: How many coming fire times the API shows.
SHOWN_FIRE_TIMES = 5
#: Longest cron expression accepted (the column's width).
MAX_CRON_CHARS = 200
CRON_FIELDS = 5


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


def new_schedule_id() -> str:
    return uuid.uuid4().hex


# -- cron and time zones -------------------------------------------------------------------------


def validate_cron(expr: str) -> str:
    """`expr` normalised to single spaces; raises `InvalidInput` (`invalid_cron`) when refused.

    Accepted: exactly five fields (minute hour day-of-month month day-of-week) with `*`, steps
    (`*/15`), ranges (`1-5`), lists (`1,15`) and month and day names (`jan`, `mon-fri`). Refused:
    anything else, and an expression that never fires within `NEVER_FIRES_HORIZON_YEARS`
    (`0 0 31 2 *`).
    """
    fields = expr.split()
    if len(fields) != CRON_FIELDS or len(expr) > MAX_CRON_CHARS:
        raise InvalidInput(
            f"cron must have exactly five fields (minute hour day-of-month month day-of-week),"
            f" e.g. '*/15 * * * *'; got {expr!r}",
            code="invalid_cron",
        )
    normalised = " ".join(fields)
    try:
        croniter(normalised)
    except (CroniterBadCronError, CroniterError, ValueError) as exc:
        raise InvalidInput(f"cron {normalised!r} is not valid: {exc}", code="invalid_cron") from None
    try:
        _iterator(normalised, ZoneInfo("UTC"), utcnow()).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidInput(
            f"cron {normalised!r} never fires: no date matches it within {NEVER_FIRES_HORIZON_YEARS} years",
            code="invalid_cron",
        ) from None
    return normalised


def validate_timezone(name: str) -> str:
    """`name` if it is an IANA time zone (`Europe/Paris`, `UTC`); raises `InvalidInput` otherwise."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(
            f"timezone {name!r} is not an IANA time zone name such as 'UTC' or 'Europe/Paris'",
            code="invalid_timezone",
        ) from None
    return name


def next_fire_times(cron: str, timezone: str, *, after: datetime, n: int) -> list[datetime]:
    """The next `n` fire times strictly after `after`, as aware UTC datetimes.

    The cron is read as wall-clock time in `timezone`; see the module docstring for DST.
    """
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    zone = ZoneInfo(timezone)
    iterator = _iterator(cron, zone, after.astimezone(zone))
    hour_is_wildcard = iterator.expanded[1] == ["*"]
    times: list[datetime] = []
    last_wall: datetime | None = None
    while len(times) < n:
        local: datetime = iterator.get_next(datetime)
        wall = local.replace(tzinfo=None, fold=0)
        # The second pass through a repeated wall-clock hour (fold=1): a fixed time fired already.
        if local.fold == 1 and not hour_is_wildcard and wall == last_wall:
            continue
        last_wall = wall
        times.append(local.astimezone(UTC))
    return times


def _iterator(cron: str, zone: ZoneInfo, start: datetime) -> croniter:
    return croniter(cron, start.astimezone(zone), max_years_between_matches=NEVER_FIRES_HORIZON_YEARS)


def _next_run_at(row: ScheduleRow, now: datetime) -> datetime | None:
    if not row.enabled:
        return None
    return next_fire_times(row.cron, row.timezone, after=now, n=1)[0]


def coming_fire_times(row: ScheduleRow, *, now: datetime, n: int = SHOWN_FIRE_TIMES) -> list[datetime]:
    """What the API shows: the next `n` fire times, none while the schedule is disabled."""
    if not row.enabled:
        return []
    return next_fire_times(row.cron, row.timezone, after=now, n=n)


# -- create, read, update, delete ----------------------------------------------------------------


def create_schedule(
    *,
    session: Session,
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
) -> ScheduleRow:
    """Validate and store a schedule, with its `next_run_at`; raises `InvalidInput`."""
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
    )
    row.next_run_at = _next_run_at(row, now)
    session.add(row)
    session.commit()
    return row


def get_schedule(*, session: Session, schedule_id: str) -> ScheduleRow:
    row = session.get(ScheduleRow, schedule_id)
    if row is None:
        raise NotFound(f"schedule {schedule_id!r} not found", code="schedule_not_found")
    return row


def list_schedules(
    *, session: Session, limit: int, cursor: str | None = None
) -> tuple[list[ScheduleRow], str | None]:
    """Newest first, one page of `limit` rows and the cursor of the next page (keyset pagination)."""
    return pages.page(session, select(ScheduleRow), ScheduleRow, limit=limit, cursor=cursor)


def update_schedule(
    *,
    session: Session,
    settings: Settings,
    tasks: TaskRegistry,
    schedule_id: str,
    changes: ScheduleChanges,
) -> ScheduleRow:
    """Apply `changes` (all validated before any is applied) and recompute `next_run_at`."""
    row = get_schedule(session=session, schedule_id=schedule_id)
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
    row.cron, row.timezone = cron, timezone
    row.params, row.priority, row.max_retries = params, priority, max_retries
    if changes.name is not None:
        row.name = changes.name
    if changes.enabled is not None:
        row.enabled = changes.enabled
    row.next_run_at = _next_run_at(row, now)
    row.updated_at = now
    session.commit()
    return row


def delete_schedule(*, session: Session, schedule_id: str) -> None:
    row = get_schedule(session=session, schedule_id=schedule_id)
    session.delete(row)
    session.commit()


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
    probe = new_row(settings, tasks, request, now=utcnow(), statuses={}, earlier=(), job_id="schedule-probe")
    return probe.task, probe.params, probe.priority, probe.max_retries
