"""What a running task may ask about its own job."""

from __future__ import annotations

from rq import get_current_job


def current_job_id() -> str | None:
    job = get_current_job()
    return job.id if job is not None else None


def current_attempt() -> int:
    """Which run of this job this is, counting from 1; 1 outside a worker."""
    from backend.queues import attempt_of

    job = get_current_job()
    return attempt_of(job) if job is not None else 1
