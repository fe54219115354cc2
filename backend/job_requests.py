"""What a submit asks for, and turning it into a validated row: the rules of every control.

- `run_at` (with a UTC offset) or `delay_s`, not both: the job is `scheduled` until then. A
  `run_at` up to `RUN_AT_GRACE_S` in the past means now; further back it is refused.
- `depends_on`: up to `MAX_DEPENDENCIES` existing jobs, none failed or cancelled; the job is
  `scheduled` until all have succeeded. Not together with a delay.
- `timeout_s`: 1 to `LANES_MAX_TIMEOUT_S`; the task's own timeout otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backend import dependencies
from backend.config import Settings
from backend.enqueue import Enqueueable
from backend.enums import JobStatus, Priority
from backend.errors import InvalidInput
from backend.tasks import TaskRegistry
from backend.webhook_urls import Allowance, check_url

#: The most jobs one batch submit may carry.
MAX_BATCH_JOBS = 1000
#: The most jobs one job may depend on.
MAX_DEPENDENCIES = 100
#: A `run_at` at most this far in the past means "now"; further back it is refused.
RUN_AT_GRACE_S = 60


@dataclass(frozen=True)
class JobRequest:
    """What a submit asks for, as given: nothing here is validated yet."""

    task: str
    params: dict[str, Any] = field(default_factory=dict)
    priority: Priority | None = None
    max_retries: int | None = None
    run_at: datetime | None = None
    delay_s: float | None = None
    depends_on: Sequence[str] = ()
    timeout_s: int | None = None
    #: Batch only: indexes of earlier jobs of the same batch that must succeed first.
    depends_on_items: Sequence[int] = ()
    #: The schedule that fires this job, if one does (not part of a submit's body).
    schedule_id: str | None = None
    #: Where to POST the job's end event (`backend.webhooks`).
    webhook_url: str | None = None

    def canonical(self) -> dict[str, Any]:
        """The request as JSON values: what an idempotency key's body hash is taken of."""
        return {
            "task": self.task,
            "params": self.params,
            "priority": None if self.priority is None else Priority(self.priority).value,
            "max_retries": self.max_retries,
            "run_at": None if self.run_at is None else self.run_at.astimezone(UTC).isoformat(),
            "delay_s": self.delay_s,
            "depends_on": list(self.depends_on),
            "timeout_s": self.timeout_s,
            # Only when given, so keys of requests without one hash as they did before webhooks.
            **({"webhook_url": self.webhook_url} if self.webhook_url is not None else {}),
        }


def new_row_values(
    settings: Settings,
    tasks: TaskRegistry,
    request: JobRequest,
    *,
    now: datetime,
    statuses: dict[str, JobStatus],
    earlier: Sequence[Enqueueable],
    job_id: str,
) -> dict[str, Any]:
    """The validated column values of `request`'s row, by column name; raises `InvalidInput`.

    `JobRow(**values)` is the row (a submit, a firing). Always the same names, so a batch's values
    go to one `INSERT` with no `JobRow` made (`jobs.submit_batch`): making one of each and flushing
    them cost a batch about a fifth of its time.
    """
    spec = tasks.get(request.task)
    clean_params = spec.validate(request.params)
    priority = Priority(request.priority or spec.priority)
    retries = _max_retries(settings, spec.max_retries, request.max_retries)
    timeout_s = _timeout_s(settings, spec.timeout_s, request.timeout_s)
    run_at = _run_at(settings, request, now)
    depends_on = _depends_on(request, statuses, earlier)
    if request.webhook_url is not None and request.schedule_id is None:
        # A schedule's URL was checked when the schedule was written; every URL again at send time.
        check_url(request.webhook_url, allow=Allowance.parse(settings.webhook_allow))
    if run_at is not None and depends_on:
        raise InvalidInput(
            "a job waits for its run_at or for its dependencies, not both", code="delay_with_dependencies"
        )
    # A dependency of the same batch has no status yet: it has not succeeded either.
    waits = (run_at is not None and run_at > now) or any(
        statuses.get(job_id) != JobStatus.SUCCEEDED for job_id in depends_on
    )
    return dict(
        id=job_id,
        task=spec.name,
        queue=priority.value,
        priority=priority.value,
        status=(JobStatus.SCHEDULED if waits else JobStatus.QUEUED).value,
        progress=0,
        params=clean_params,
        attempts=0,
        max_retries=retries,
        timeout_s=timeout_s,
        run_at=run_at,
        depends_on=depends_on or None,
        schedule_id=request.schedule_id,
        webhook_url=request.webhook_url,
        created_at=now,
        enqueued_at=now,
        updated_at=now,
        webhook_attempts=0,
        epoch=0,
    )


def _max_retries(settings: Settings, task_default: int | None, asked: int | None) -> int:
    if asked is None:
        return settings.default_max_retries if task_default is None else task_default
    if not 0 <= asked <= settings.max_retries_limit:
        raise InvalidInput(
            f"max_retries must be between 0 and {settings.max_retries_limit}", code="invalid_max_retries"
        )
    return asked


def _timeout_s(settings: Settings, task_default: int, asked: int | None) -> int:
    if asked is None:
        return task_default
    if not 1 <= asked <= settings.max_timeout_s:
        raise InvalidInput(
            f"timeout_s must be between 1 and {settings.max_timeout_s}", code="invalid_timeout_s"
        )
    return asked


def _run_at(settings: Settings, request: JobRequest, now: datetime) -> datetime | None:
    """When the job may run: None for now, else a UTC time (a past one within the grace: now)."""
    if request.run_at is not None and request.delay_s is not None:
        raise InvalidInput("give run_at or delay_s, not both", code="conflicting_delay")
    if request.delay_s is not None:
        if not 0 <= request.delay_s <= settings.max_delay_s:
            raise InvalidInput(
                f"delay_s must be between 0 and {settings.max_delay_s}", code="invalid_delay_s"
            )
        return now + timedelta(seconds=request.delay_s)
    if request.run_at is None:
        return None
    if request.run_at.tzinfo is None:
        raise InvalidInput("run_at needs a UTC offset, e.g. +00:00", code="invalid_run_at")
    run_at = request.run_at.astimezone(UTC)
    if run_at < now - timedelta(seconds=RUN_AT_GRACE_S):
        raise InvalidInput(
            {
                "message": f"run_at is more than {RUN_AT_GRACE_S} s in the past",
                "run_at": run_at.isoformat(),
                "now": now.isoformat(),
            },
            code="run_at_in_past",
        )
    if run_at > now + timedelta(seconds=settings.max_delay_s):
        raise InvalidInput(f"run_at may be at most {settings.max_delay_s} s from now", code="invalid_run_at")
    return run_at


def _depends_on(
    request: JobRequest, statuses: dict[str, JobStatus], earlier: Sequence[Enqueueable]
) -> list[str]:
    """The ids the job waits on: `depends_on`, then the batch's earlier jobs it names."""
    depends_on = list(dict.fromkeys(request.depends_on))
    dependencies.check_dependencies(depends_on, statuses)
    for index in request.depends_on_items:
        if not 0 <= index < len(earlier):
            raise InvalidInput(
                f"depends_on_items may name only earlier jobs of the batch (0 to {len(earlier) - 1}),"
                f" not {index}",
                code="invalid_depends_on_items",
            )
    depends_on.extend(earlier[index].id for index in request.depends_on_items)
    depends_on = list(dict.fromkeys(depends_on))
    if len(depends_on) > MAX_DEPENDENCIES:
        raise InvalidInput(f"a job may depend on at most {MAX_DEPENDENCIES} jobs", code="invalid_depends_on")
    return depends_on
