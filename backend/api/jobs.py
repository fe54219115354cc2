"""/api/v1/jobs: submit, read, list and count jobs."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from backend import jobs
from backend.api.deps import RedisDep, SessionDep, SettingsDep, TasksDep
from backend.enums import JobStatus, Priority
from backend.errors import NotFound
from backend.schemas import ErrorOut, JobCreate, JobOut, JobPage, JobStats

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TASK_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 404, 413, 422, 503)}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, responses=ERRORS)
def submit_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    tasks: TasksDep,
) -> JobOut:
    """Submit a job: validate its params, record it, and put it on its priority's queue."""
    row = jobs.submit_job(
        session=session,
        redis=redis,
        settings=settings,
        tasks=tasks,
        task=body.task,
        params=body.params,
        priority=body.priority,
        max_retries=body.max_retries,
    )
    response.headers["Location"] = f"{router.prefix}/{row.id}"
    return JobOut.model_validate(row)


@router.get("", response_model=JobPage, responses=ERRORS)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    status: JobStatus | None = None,
    task: Annotated[str | None, Query(pattern=TASK_NAME_PATTERN)] = None,
    priority: Priority | None = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> JobPage:
    """List jobs, newest first, one page at a time."""
    rows, next_cursor = jobs.list_jobs(
        session=session,
        filters=jobs.JobFilter(status=status, task=task, priority=priority),
        limit=min(limit, settings.list_limit_max),
        cursor=cursor,
    )
    return JobPage(items=[JobOut.model_validate(row) for row in rows], next_cursor=next_cursor)


@router.get("/stats", response_model=JobStats, responses=ERRORS)
def job_stats(session: SessionDep) -> JobStats:
    """Count jobs by status, overall and per queue."""
    return JobStats.model_validate(jobs.job_stats(session=session))


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(job_id: Annotated[str, Path(max_length=200)], session: SessionDep) -> JobOut:
    """Read one job: status, progress, result or error, attempts and timestamps."""
    if not _valid_id(job_id):
        raise NotFound(f"job {job_id!r} not found", code="job_not_found")
    return JobOut.model_validate(jobs.get_job(session=session, job_id=job_id))


def _valid_id(job_id: str) -> bool:
    return re.fullmatch(JOB_ID_PATTERN, job_id) is not None
