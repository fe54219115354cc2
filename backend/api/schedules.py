"""/api/v1/schedules: create, read, list, change, delete and run cron schedules, and their jobs.

Every change is written to SQL and then, at once, to the schedule's rq-scheduler entry in Redis;
the scheduler daemon (`make scheduler`) fires due schedules and re-syncs Redis from SQL.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from backend import cron, schedules
from backend.api.auth import CallerDep, get_caller
from backend.api.deps import NowDep, RedisDep, SessionDep, SettingsDep, TasksDep
from backend.api.jobs import with_estimates
from backend.api.ratelimit import LimitName, route_limit
from backend.db import utcnow
from backend.enums import Priority
from backend.errors import NotFound
from backend.models import JobRow, ScheduleRow
from backend.schemas import ErrorOut, JobOut, JobPage, NoNul, Timestamp, WebhookUrl

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"], dependencies=[Depends(get_caller)])

SCHEDULE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 413, 422, 429, 503)
}
ScheduleId = Annotated[str, Path(max_length=200)]
Name = Annotated[str, Field(min_length=1, max_length=200), NoNul]
Cron = Annotated[str, Field(min_length=1, max_length=cron.MAX_CRON_CHARS, examples=["*/15 * * * *"])]
TimeZone = Annotated[str, Field(min_length=1, max_length=64, examples=["Europe/Paris"])]


class ScheduleCreate(BaseModel):
    """Run `task` with `params` whenever `cron` matches, read as wall-clock time in `timezone`."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    task: str = Field(min_length=1, max_length=200, examples=["demo.sleep"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"seconds": 3}])
    cron: Cron
    timezone: TimeZone = "UTC"
    priority: Priority | None = Field(default=None, description="Default: the task's own priority.")
    max_retries: int | None = Field(default=None, ge=0, description="Default: the task's own policy.")
    enabled: bool = True
    webhook_url: WebhookUrl | None = None


class ScheduleUpdate(BaseModel):
    """The fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    enabled: bool | None = None
    cron: Cron | None = None
    timezone: TimeZone | None = None
    params: dict[str, Any] | None = None
    priority: Priority | None = None
    max_retries: int | None = Field(default=None, ge=0)
    webhook_url: WebhookUrl | None = Field(default=None, description='"" removes it.')


class ScheduleOut(BaseModel):
    """A schedule as its SQL row shows it, with its coming fire times."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    task: str
    params: dict[str, Any]
    priority: Priority
    max_retries: int
    cron: str
    timezone: str
    enabled: bool
    last_run_at: Timestamp | None
    next_run_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    created_by: str | None
    webhook_url: str | None = None
    last_job_id: str | None = Field(default=None, description="The newest job it fired (lists only).")
    last_job_status: str | None = Field(
        default=None, description="That job's status: the last run's outcome."
    )
    next_fire_times: list[Timestamp] = Field(
        default_factory=list, description="The next few fire times in UTC; empty while disabled."
    )


class SchedulePage(BaseModel):
    items: list[ScheduleOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null at the end."
    )


def _out(row: ScheduleRow, last: JobRow | None = None) -> ScheduleOut:
    fire_times = cron.coming_fire_times(row, now=utcnow())
    outcome = {"last_job_id": last.id, "last_job_status": last.status} if last is not None else {}
    return ScheduleOut.model_validate(row).model_copy(update={"next_fire_times": fire_times, **outcome})


def _check_id(schedule_id: str) -> None:
    if re.fullmatch(SCHEDULE_ID_PATTERN, schedule_id) is None:
        raise NotFound(f"schedule {schedule_id!r} not found", code="schedule_not_found")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ScheduleOut, responses=ERRORS)
def create_schedule(
    body: ScheduleCreate,
    response: Response,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    tasks: TasksDep,
    caller: CallerDep,
) -> ScheduleOut:
    """Create a schedule: its task and params are validated like a job submit, its cron checked."""
    row = schedules.create_schedule(
        session=session,
        redis=redis,
        settings=settings,
        tasks=tasks,
        tenant_id=caller.tenant_id,
        created_by=caller.label,
        **body.model_dump(exclude_none=True),
    )
    response.headers["Location"] = f"{router.prefix}/{row.id}"
    return _out(row)


@router.get("", response_model=SchedulePage, responses=ERRORS)
def list_schedules(
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> SchedulePage:
    """List schedules, newest first, one page at a time."""
    rows, next_cursor = schedules.list_schedules(
        session=session, limit=min(limit, settings.list_limit_max), cursor=cursor, tenant_id=caller.scope
    )
    last = schedules.last_jobs(session=session, schedule_ids=[row.id for row in rows])
    return SchedulePage(items=[_out(row, last.get(row.id)) for row in rows], next_cursor=next_cursor)


@router.get("/{schedule_id}", response_model=ScheduleOut, responses=ERRORS)
def get_schedule(schedule_id: ScheduleId, session: SessionDep, caller: CallerDep) -> ScheduleOut:
    """Read one schedule and its next fire times."""
    _check_id(schedule_id)
    return _out(schedules.get_schedule(session=session, schedule_id=schedule_id, tenant_id=caller.scope))


@router.patch("/{schedule_id}", response_model=ScheduleOut, responses=ERRORS)
def update_schedule(
    schedule_id: ScheduleId,
    body: ScheduleUpdate,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    tasks: TasksDep,
    caller: CallerDep,
) -> ScheduleOut:
    """Change a schedule: enable or disable it, its cron, time zone, params, priority, retries, name."""
    _check_id(schedule_id)
    row = schedules.update_schedule(
        session=session,
        redis=redis,
        settings=settings,
        tasks=tasks,
        schedule_id=schedule_id,
        changes=schedules.ScheduleChanges(**body.model_dump(exclude_none=True)),
        tenant_id=caller.scope,
    )
    return _out(row)


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def delete_schedule(
    schedule_id: ScheduleId, session: SessionDep, redis: RedisDep, caller: CallerDep
) -> Response:
    """Delete a schedule; it fires no more. The jobs it fired stay."""
    _check_id(schedule_id)
    schedules.delete_schedule(session=session, redis=redis, schedule_id=schedule_id, tenant_id=caller.scope)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{schedule_id}/run",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses=ERRORS,
    openapi_extra=route_limit(LimitName.SUBMIT),
)
def run_schedule(
    schedule_id: ScheduleId,
    response: Response,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    tasks: TasksDep,
    caller: CallerDep,
    now: NowDep,
) -> JobOut:
    """Fire a schedule now (enabled or not) as a new job; its cron times stay as they are."""
    _check_id(schedule_id)
    job = schedules.run_now(
        session=session,
        redis=redis,
        settings=settings,
        tasks=tasks,
        schedule_id=schedule_id,
        tenant_id=caller.scope,
        now=now,
    )
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return JobOut.model_validate(job)


@router.get("/{schedule_id}/jobs", response_model=JobPage, responses=ERRORS)
def list_schedule_jobs(
    schedule_id: ScheduleId,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> JobPage:
    """List the jobs a schedule has fired, newest first, one page at a time."""
    _check_id(schedule_id)
    rows, next_cursor = schedules.list_schedule_jobs(
        session=session,
        schedule_id=schedule_id,
        limit=min(limit, settings.list_limit_max),
        cursor=cursor,
        tenant_id=caller.scope,
    )
    return JobPage(items=with_estimates(session, redis, rows), next_cursor=next_cursor)
