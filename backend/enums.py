"""The words of the domain that travel as strings: statuses and priorities."""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    """A job's priority; each is also the name of its RQ queue."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


#: Strict order in which workers drain the queues.
QUEUE_ORDER: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)

#: The queue of webhook deliveries: short HTTP calls, never mirrored as jobs of their own.
WEBHOOK_QUEUE = "webhooks"
#: The internal task that delivers one webhook attempt; runs only from `WEBHOOK_QUEUE`.
DELIVERY_TASK = "lanes.webhook"

#: What a worker drains by default: deliveries come after `high` and before `normal` and `low`,
#: so a receiver hears of a job's end even while a backlog of ordinary work waits.
WORKER_QUEUES: tuple[str, ...] = (
    Priority.HIGH.value,
    WEBHOOK_QUEUE,
    Priority.NORMAL.value,
    Priority.LOW.value,
)


class JobStatus(StrEnum):
    """A job's status as the SQL row and the API show it."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

#: Within one attempt a row only climbs this ladder; a new attempt starts again at the bottom.
STATUS_RANK: dict[JobStatus, int] = {
    JobStatus.SCHEDULED: 0,
    JobStatus.QUEUED: 1,
    JobStatus.STARTED: 2,
    JobStatus.RETRYING: 3,
    JobStatus.SUCCEEDED: 4,
    JobStatus.FAILED: 4,
    JobStatus.CANCELLED: 4,
}


class WebhookEvent(StrEnum):
    """What a webhook tells: a job ended (failed only once its retries are spent)."""

    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"

    @classmethod
    def for_status(cls, status: JobStatus) -> WebhookEvent:
        return {
            JobStatus.SUCCEEDED: cls.SUCCEEDED,
            JobStatus.FAILED: cls.FAILED,
            JobStatus.CANCELLED: cls.CANCELLED,
        }[status]


class Plan(StrEnum):
    """A tenant's plan: what its quotas are (the numbers are settings)."""

    FREE = "free"
    PRO = "pro"
    ELITE = "elite"
    UNLIMITED = "unlimited"


class Role(StrEnum):
    """What an API key may do within its tenant; an admin of the operator's tenant sees all."""

    ADMIN = "admin"
    MEMBER = "member"
