"""/api/v1/jobs: submit (one or a batch), read, list and count jobs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status
from pydantic import ValidationError
from redis import Redis
from sqlalchemy import Row
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backend import control, estimates, jobs, tenants
from backend.api.auth import CallerDep, PlatformAdminDep, check_tenant_name, get_caller
from backend.api.deps import ContextDep, RedisDep, SessionDep, SettingsDep
from backend.api.errors import validation_code
from backend.api.ratelimit import LimitName, route_limit
from backend.config import Settings
from backend.db import utcnow
from backend.enums import JobStatus, Priority
from backend.errors import InvalidInput, NotFound
from backend.job_requests import JobRequest
from backend.models import JobRow
from backend.schemas import (
    ErrorOut,
    JobBatchCreate,
    JobBatchItem,
    JobBatchOut,
    JobCreate,
    JobOut,
    JobPage,
    JobStats,
)
from backend.tasks import TaskRegistry

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], dependencies=[Depends(get_caller)])

JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TASK_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 422, 429, 503)
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses=ERRORS,
    openapi_extra=route_limit(LimitName.SUBMIT),
)
async def submit_job(
    body: JobCreate,
    response: Response,
    context: ContextDep,
    session: SessionDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="The same key and body within LANES_IDEMPOTENCY_TTL_S return the first job.",
        ),
    ] = None,
) -> JobOut:
    """Submit a job: validate its params, record it, and put it on its priority's queue."""
    # `async def` with one explicit hop to the thread pool for the SQL and Redis work: a plain `def`
    # route costs FastAPI two (the route, then the validation of its answer). The app's objects come
    # from the context, not a dependency each: FastAPI's resolution costs more than the submit's SQL.
    submission = await run_in_threadpool(
        jobs.submit,
        session=session,
        redis=context.redis,
        settings=context.settings,
        tasks=context.tasks,
        request=_request(body),
        idempotency_key=idempotency_key,
        tenant_id=caller.tenant_id,
        now=context.clock(),
    )
    response.headers["Location"] = f"{router.prefix}/{submission.row.id}"
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return JobOut.model_validate(submission.row)


@router.post(
    "/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobBatchOut,
    responses=ERRORS,
    openapi_extra=route_limit(LimitName.BATCH),
)
async def submit_batch(
    body: JobBatchCreate, context: ContextDep, session: SessionDep, caller: CallerDep
) -> JobBatchOut:
    """Submit up to 1,000 jobs at once: all validated first, then accepted together or not at all."""
    # One hop to the thread pool for all of it, and the app's objects from the context, as `submit_job`.
    return await run_in_threadpool(
        _submit_batch,
        body=body,
        session=session,
        redis=context.redis,
        settings=context.settings,
        tasks=context.tasks,
        tenant_id=caller.tenant_id,
        now=context.clock(),
    )


def _submit_batch(
    *,
    body: JobBatchCreate,
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    tenant_id: str,
    now: datetime,
) -> JobBatchOut:
    requests = [_request(_batch_item(index, item)) for index, item in enumerate(body.jobs)]
    rows = jobs.submit_batch(
        session=session,
        redis=redis,
        settings=settings,
        tasks=tasks,
        requests=requests,
        tenant_id=tenant_id,
        now=now,
    )
    return JobBatchOut(jobs=[JobOut.model_validate(values) for values in rows])


def _batch_item(index: int, raw: Any) -> JobBatchItem:
    try:
        return JobBatchItem.model_validate(raw)
    except ValidationError as exc:
        errors = [{k: v for k, v in e.items() if k in {"loc", "msg", "type"}} for e in exc.errors()]
        raise InvalidInput(
            {"index": index, "code": validation_code(errors), "errors": errors}, code="invalid_batch_item"
        ) from None


def _request(body: JobCreate) -> JobRequest:
    return JobRequest(
        task=body.task,
        params=body.params,
        priority=body.priority,
        max_retries=body.max_retries,
        run_at=body.run_at,
        delay_s=body.delay_s,
        depends_on=body.depends_on or (),
        timeout_s=body.timeout_s,
        webhook_url=body.webhook_url,
        depends_on_items=getattr(body, "depends_on_items", None) or (),
    )


@router.get("", response_model=JobPage, responses=ERRORS)
def list_jobs(
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    caller: CallerDep,
    status: JobStatus | None = None,
    task: Annotated[str | None, Query(pattern=TASK_NAME_PATTERN)] = None,
    priority: Priority | None = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    tenant: Annotated[
        str | None, Query(max_length=200, description="One tenant's jobs, by name or id (platform admins).")
    ] = None,
) -> JobPage:
    """List jobs, newest first, one page at a time."""
    check_tenant_name(tenant)
    scope = tenants.scope_for(
        session=session, own=caller.tenant_id, admin=caller.platform_admin, asked=tenant
    )
    rows, next_cursor = jobs.list_jobs(
        session=session,
        filters=jobs.JobFilter(status=status, task=task, priority=priority),
        limit=min(limit, settings.list_limit_max),
        cursor=cursor,
        tenant_id=scope,
    )
    return JobPage(items=with_estimates(session, redis, rows), next_cursor=next_cursor)


@router.get("/stats", response_model=JobStats, responses=ERRORS)
def job_stats(session: SessionDep, caller: CallerDep) -> JobStats:
    """Count jobs by status, overall and per queue (the caller's tenant's; every tenant's for an admin)."""
    return JobStats.model_validate(jobs.job_stats(session=session, tenant_id=caller.scope))


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(
    job_id: Annotated[str, Path(max_length=200)], session: SessionDep, redis: RedisDep, caller: CallerDep
) -> JobOut:
    """Read one job: status, progress, result or error, attempts, timestamps; estimates while it waits."""
    if not _valid_id(job_id):
        raise NotFound(f"job {job_id!r} not found", code="job_not_found")
    return with_estimates(
        session, redis, [jobs.get_job(session=session, job_id=job_id, tenant_id=caller.scope)]
    )[0]


def with_estimates(session: Session, redis: Redis, rows: Sequence[JobRow | Row[Any]]) -> list[JobOut]:
    """Rows as the API shows them, waiting ones with their position and estimated times.

    Each is validated from a dict of its columns (`jobs.listed`): pydantic reads a dict three
    times faster than a row's attributes."""
    now = utcnow()
    waiting = [row for row in rows if estimates.may_wait_in_queue(row, now)]
    found = estimates.estimates_for_many(session=session, redis=redis, jobs=waiting) if waiting else {}
    return [
        JobOut.model_validate(jobs.listed(row) | found[row.id].fields())
        if row.id in found
        else JobOut.model_validate(jobs.listed(row))
        for row in rows
    ]


def _valid_id(job_id: str) -> bool:
    return re.fullmatch(JOB_ID_PATTERN, job_id) is not None


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def delete_job(
    job_id: Annotated[str, Path(max_length=200)],
    session: SessionDep,
    redis: RedisDep,
    caller: PlatformAdminDep,
) -> Response:
    """Delete an ended job: its row, its webhook attempts and RQ's record (platform admins)."""
    if not _valid_id(job_id):
        raise NotFound(f"job {job_id!r} not found", code="job_not_found")
    control.delete_job(session=session, redis=redis, job_id=job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
