"""What travels over HTTP: request and response models of the v1 API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SkipValidation,
)

from backend.enums import JobStatus, Priority
from backend.job_requests import MAX_BATCH_JOBS, MAX_DEPENDENCIES

#: A UTC timestamp written as ISO 8601 with an explicit offset (`2026-11-22T10:46:35.764910+00:00`).
Timestamp = Annotated[
    datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str, when_used="json")
]

#: Where a job's end is POSTed: http(s), public hosts only (checked when written and at each send).
WebhookUrl = Annotated[
    str,
    Field(max_length=2048, examples=["https://example.com/hooks/lanes"], description="See README: Webhooks."),
]

#: A job id as Lanes makes them (RQ-valid: letters, digits, `_`, `-`).
JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def _has_utc_time(value: datetime) -> datetime:
    """`value`, if it is a time in UTC too: `9999-12-31T23:59:59-23:59` is past year 9999 there."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once in UTC") from None
    return value


#: A time with a UTC offset that has a UTC equivalent.
UtcTime = Annotated[AwareDatetime, AfterValidator(_has_utc_time)]


def _refuse_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    return value


#: For text written to SQL as given: PostgreSQL cannot store a NUL character, so none is accepted.
NoNul = AfterValidator(_refuse_nul)


class JobCreate(BaseModel):
    """A request to run `task` once with `params`."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200, examples=["demo.sleep"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"seconds": 3}])
    priority: Priority | None = Field(default=None, description="Default: the task's own priority.")
    max_retries: int | None = Field(
        default=None, ge=0, description="Retries after the first attempt (at most LANES_MAX_RETRIES_LIMIT)."
    )
    run_at: UtcTime | None = Field(
        default=None,
        description="Run no earlier than this (ISO 8601 with offset). More than a minute past: refused.",
        examples=["2026-11-22T18:00:00+00:00"],
    )
    delay_s: float | None = Field(
        default=None, ge=0, description="Run this many seconds from now (not with `run_at`)."
    )
    depends_on: list[JobId] | None = Field(
        default=None,
        max_length=MAX_DEPENDENCIES,
        description="Ids of jobs that must all succeed first; if one fails or is cancelled, so is this one.",
    )
    timeout_s: int | None = Field(
        default=None, ge=1, description="Kill a run after this long (default: the task's own timeout)."
    )
    webhook_url: WebhookUrl | None = Field(
        default=None, description="POST job.succeeded, job.failed or job.cancelled here, signed."
    )


class JobBatchItem(JobCreate):
    """One job of a batch: a `JobCreate`, which may also wait on earlier jobs of the same batch."""

    depends_on_items: list[int] | None = Field(
        default=None,
        max_length=MAX_DEPENDENCIES,
        description="Indexes of earlier jobs in this batch that must succeed first.",
    )


class JobBatchCreate(BaseModel):
    """Up to 1,000 jobs, validated all first and accepted together or not at all."""

    model_config = ConfigDict(extra="forbid")

    # Items are checked one by one in the route, so that a refusal names the item's index.
    jobs: list[SkipValidation[JobBatchItem]] = Field(min_length=1, max_length=MAX_BATCH_JOBS)


class JobOut(BaseModel):
    """A job as its SQL row shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    task: str
    status: JobStatus
    priority: Priority
    queue: str
    params: dict[str, Any]
    progress: int
    stage: str | None
    result: Any | None
    error: str | None
    traceback: str | None
    attempts: int
    max_retries: int
    next_retry_at: Timestamp | None
    created_at: Timestamp
    enqueued_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    worker: str | None
    # Job control (issue 3): delays, dependencies, timeouts and cancellation.
    run_at: Timestamp | None = None
    depends_on: list[str] | None = None
    timeout_s: int | None = None
    cancelled_at: Timestamp | None = None
    cancelled_by: str | None = None
    schedule_id: str | None = Field(default=None, description="The schedule that fired this job, if any.")
    webhook_url: str | None = None
    webhook_delivered: bool | None = Field(
        default=None, description="Its end event: delivered (true), given up (false), or not yet (null)."
    )
    webhook_attempts: int = 0
    position: int | None = Field(default=None, description="1-based place in its queue while it waits.")
    ahead: int | None = Field(
        default=None, description="Jobs that will start before it, higher queues included."
    )
    estimated_start_at: Timestamp | None = Field(
        default=None,
        description="While it waits: when it should start (docs/estimates.md says how good this is).",
    )
    estimated_finish_at: Timestamp | None = None
    estimate_basis: dict[str, Any] | None = Field(
        default=None, description="What the estimate rests on: live workers, mean durations, sample sizes."
    )


class JobBatchOut(BaseModel):
    jobs: list[JobOut] = Field(description="The accepted jobs, in the order they were given.")


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null at the end."
    )


class QueueStats(BaseModel):
    total: int
    by_status: dict[JobStatus, int]


class JobStats(QueueStats):
    queues: dict[str, QueueStats]


class TaskOut(BaseModel):
    name: str
    description: str
    priority: Priority
    timeout_s: int
    max_retries: int
    params_schema: dict[str, Any]


class SchedulerHealthOut(BaseModel):
    """The scheduler daemons (`make scheduler`) that are alive, and what they last did."""

    model_config = ConfigDict(from_attributes=True)

    running: int = Field(description="Live scheduler processes (heartbeat within about 11 s).")
    last_heartbeat_at: Timestamp | None
    last_sync_at: Timestamp | None = Field(description="Redis last made to match the schedules table.")
    last_reconcile_at: Timestamp | None
    last_reconcile: str | None = Field(description="The summary of that reconcile run.")
    last_prune_at: Timestamp | None


class HealthOut(BaseModel):
    status: str = Field(
        description="`healthy`, `degraded` (200, see warnings) or `unhealthy` (503, see reasons)."
    )
    redis: str
    database: str
    workers: int
    scheduler: SchedulerHealthOut
    reasons: list[str]
    warnings: list[str] = Field(default_factory=list)
    redis_latency_ms: float | None = Field(default=None, description="One PING, as this API process saw it.")
    redis_memory_bytes: int | None = Field(default=None, description="Redis's used_memory.")
    oldest_queued_age_s: float | None = Field(
        default=None, description="How long the oldest queued job has waited."
    )
    mirror_pending: int | None = Field(default=None, description="Jobs whose SQL write waits to be replayed.")


class ErrorOut(BaseModel):
    detail: Any
    code: str


class PeriodCredits(BaseModel):
    """One quota period: its limit (None: no limit), the jobs taken, what is left, and when it resets."""

    limit: int | None
    used: int
    remaining: int | None
    resets_at: Timestamp


class CreditsOut(BaseModel):
    """A tenant's quota credits for the current UTC day and month."""

    tenant: str
    plan: str
    daily: PeriodCredits
    monthly: PeriodCredits


class TenantOut(BaseModel):
    """A tenant as a platform admin sees it: its plan, its own quotas if any, and its credits."""

    id: str
    name: str
    plan: str
    daily_quota: int | None
    monthly_quota: int | None
    created_at: Timestamp
    credits: CreditsOut


class WebhookDeliveryOut(BaseModel):
    """One attempt to deliver a job's end event."""

    model_config = ConfigDict(from_attributes=True)

    event_id: str = Field(description="The `webhook-id` header: the same on every attempt of one event.")
    event: str
    url: str
    attempt: int
    status_code: int | None
    response_ms: int | None
    error: str | None
    delivered: bool
    delivered_at: Timestamp = Field(description="When the attempt was made.")


class WebhookSecretOut(BaseModel):
    """The tenant's webhook signing secret (Standard Webhooks `whsec_…`)."""

    secret: str
    previous_valid_until: Timestamp | None = Field(
        default=None, description="After a rotation, the old secret also signs until then."
    )


class QueueOut(BaseModel):
    """One queue: RQ's counts (platform admins only: they span tenants) and the SQL rows by status."""

    name: str
    rq: dict[str, int] | None = Field(
        default=None,
        description="queued (the list); started, scheduled, deferred, finished, failed, canceled.",
    )
    sql: dict[str, int] | None = Field(default=None, description="Rows by status (the caller's tenant's).")
    paused: bool = Field(default=False, description="Workers take none of its jobs until it is resumed.")


class QueueControlOut(BaseModel):
    name: str
    paused: bool


class QueuesOut(BaseModel):
    queues: list[QueueOut]
    workers: int = Field(description="Live workers.")


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    count: int


class ThroughputPoint(BaseModel):
    at: Timestamp = Field(description="The start of the bucket.")
    succeeded: int
    failed: int


class QueueStatsOut(BaseModel):
    succeeded: int
    failed: int
    throughput: list[ThroughputPoint]
    wait_s: Percentiles = Field(description="Enqueued to started (the last attempt), in seconds.")
    run_s: Percentiles = Field(description="Started to finished, in seconds.")


class StatsOut(BaseModel):
    """Jobs that finished in the window: throughput per bucket, wait and run time percentiles."""

    window_s: int
    bucket_s: int
    since: Timestamp
    until: Timestamp
    sampled: int = Field(
        description="Finished jobs the percentiles rest on; at most sample_limit, the newest. The"
        " throughput and the succeeded and failed counts cover every job of the window."
    )
    sample_limit: int
    queues: dict[str, QueueStatsOut]


class WorkerOut(BaseModel):
    """A registered RQ worker."""

    name: str
    hostname: str | None
    pid: int | None
    queues: list[str]
    state: str = Field(description="idle, busy, suspended, started …")
    current_job: str | None
    current_job_started_at: Timestamp | None
    current_job_elapsed_s: float | None
    successful_jobs: int
    failed_jobs: int
    birth_at: Timestamp | None
    last_heartbeat_at: Timestamp | None
