"""What travels over HTTP: request and response models of the v1 API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from backend.enums import JobStatus, Priority

#: A UTC timestamp written as ISO 8601 with an explicit offset (`2026-11-22T10:46:35.764910+00:00`).
Timestamp = Annotated[
    datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str, when_used="json")
]


class JobCreate(BaseModel):
    """A request to run `task` once with `params`."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200, examples=["demo.sleep"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"seconds": 3}])
    priority: Priority | None = Field(default=None, description="Default: the task's own priority.")
    max_retries: int | None = Field(
        default=None, ge=0, description="Retries after the first attempt (at most LANES_MAX_RETRIES_LIMIT)."
    )


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


class HealthOut(BaseModel):
    status: str = Field(description="`healthy` or `unhealthy`.")
    redis: str
    database: str
    workers: int
    reasons: list[str]


class ErrorOut(BaseModel):
    detail: Any
    code: str
