"""/api/v1/jobs/…/cancel and …/retry: stop jobs and run them again, one or many."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend import control
from backend.api.auth import Caller, CallerDep, get_caller
from backend.api.deps import NowDep, RedisDep, SessionDep, SettingsDep
from backend.enums import JobStatus, Priority
from backend.errors import NotFound
from backend.schemas import ErrorOut, JobOut

router = APIRouter(prefix="/api/v1/jobs", tags=["job control"], dependencies=[Depends(get_caller)])

JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TASK_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 422, 429, 503)
}
JobId = Annotated[str, Path(max_length=200)]


class Selection(BaseModel):
    """Which jobs: a list of `ids`, or a filter (`status`, `task`, `priority`), at most `limit`."""

    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[str, Field(pattern=JOB_ID_PATTERN)]] | None = Field(
        default=None, max_length=control.BULK_LIMIT
    )
    status: JobStatus | None = None
    task: str | None = Field(default=None, pattern=TASK_NAME_PATTERN)
    priority: Priority | None = None
    limit: int = Field(default=control.BULK_LIMIT, ge=1, le=control.BULK_LIMIT)

    @model_validator(mode="after")
    def _ids_or_filter(self) -> Selection:
        filtered = self.status is not None or self.task is not None or self.priority is not None
        if self.ids is None and not filtered:
            raise ValueError("give `ids`, or at least one of `status`, `task`, `priority`")
        if self.ids is not None and filtered:
            raise ValueError("give either `ids` or a filter, not both")
        return self

    def to_domain(self, caller: Caller) -> control.Selection:
        return control.Selection(
            ids=self.ids,
            status=self.status,
            task=self.task,
            priority=self.priority,
            limit=self.limit,
            tenant_id=caller.scope,
        )


class Refused(BaseModel):
    id: str
    reason: str
    status: JobStatus | None = None


class CancelReport(BaseModel):
    cancelled: list[str] = Field(description="Now `cancelled`.")
    stopping: list[str] = Field(description="Running: sent RQ's stop command; they end `cancelled` shortly.")
    not_cancelled: list[Refused]

    @classmethod
    def of(cls, report: control.BulkReport) -> CancelReport:
        """A bulk cancel's outcome as the API answers it."""
        return cls(
            cancelled=report.done,
            stopping=report.in_progress,
            not_cancelled=[Refused.model_validate(item) for item in report.refused],
        )


class RetryReport(BaseModel):
    requeued: list[str]
    not_requeued: list[Refused]


def _check_id(job_id: str) -> None:
    if re.fullmatch(JOB_ID_PATTERN, job_id) is None:
        raise NotFound(f"job {job_id!r} not found", code="job_not_found")


@router.post("/cancel", response_model=CancelReport, responses=ERRORS)
def cancel_jobs(
    body: Selection, session: SessionDep, redis: RedisDep, settings: SettingsDep, caller: CallerDep
) -> CancelReport:
    """Cancel many jobs, by ids or by filter; says what was cancelled and what could not be, and why."""
    report = control.cancel_many(
        session=session, redis=redis, selection=body.to_domain(caller), by=caller.label, settings=settings
    )
    return CancelReport.of(report)


@router.post("/retry", response_model=RetryReport, responses=ERRORS)
def retry_jobs(
    body: Selection,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    caller: CallerDep,
    now: NowDep,
) -> RetryReport:
    """Requeue many failed (by default) or cancelled jobs: drain the dead letter on purpose."""
    report = control.requeue_many(
        session=session, redis=redis, settings=settings, selection=body.to_domain(caller), now=now
    )
    return RetryReport(
        requeued=report.done, not_requeued=[Refused.model_validate(item) for item in report.refused]
    )


@router.post("/{job_id}/cancel", response_model=JobOut, responses={202: {"model": JobOut}, **ERRORS})
def cancel_job(
    job_id: JobId,
    response: Response,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> JobOut:
    """Cancel a job: waiting jobs at once; a running job is stopped (202 while it stops)."""
    _check_id(job_id)
    row, final = control.cancel_job(
        session=session,
        redis=redis,
        job_id=job_id,
        wait_s=settings.cancel_wait_s,
        by=caller.label,
        tenant_id=caller.scope,
        settings=settings,
    )
    response.status_code = status.HTTP_200_OK if final else status.HTTP_202_ACCEPTED
    return JobOut.model_validate(row)


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, responses=ERRORS)
def retry_job(
    job_id: JobId,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    caller: CallerDep,
    now: NowDep,
) -> JobOut:
    """Run a failed or cancelled job again under the same id; attempts continue; takes a quota credit."""
    _check_id(job_id)
    return JobOut.model_validate(
        control.requeue_job(
            session=session, redis=redis, settings=settings, job_id=job_id, tenant_id=caller.scope, now=now
        )
    )
