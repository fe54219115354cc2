"""Jobs that wait on other jobs: checking dependencies at submit, and the cancel cascade.

A job with `depends_on` waits (`scheduled` in SQL, `deferred` in RQ) until all of its
dependencies have succeeded; RQ's worker then enqueues it. RQ leaves a job whose dependency
failed deferred for ever, so Lanes cancels it instead: `cancel_dependents` runs when a job ends
`failed` (its retries spent) or `cancelled`, and cancels every job still waiting on it, their
dependents in turn, in SQL (`cancelled`, `cancelled_by = "dependency"`, an error that names the
dependency and why) and in RQ (`job.cancel()`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus as RQStatus
from sqlalchemy import String, cast, select, update
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.enums import JobStatus
from backend.errors import InvalidInput
from backend.models import JobRow
from backend.queues import CANCEL_FLAG_TTL_S, LanesJob, cancel_flag_key

log = logging.getLogger(__name__)

#: Who cancelled a job whose dependency failed or was cancelled (`jobs.cancelled_by`).
CANCELLED_BY = "dependency"
#: A dependency in one of these states can never succeed: nothing may wait on it any more.
DEAD_ENDS = (JobStatus.FAILED, JobStatus.CANCELLED)
_RQ_WAITING = {RQStatus.DEFERRED, RQStatus.SCHEDULED, RQStatus.QUEUED}
_ID_CHUNK = 500  # ids per IN (...) list, well under SQLite's and PostgreSQL's parameter limits
_ERROR_MAX = 2000


def statuses_of(
    session: Session, job_ids: Iterable[str], tenant_id: str | None = None
) -> dict[str, JobStatus]:
    """The SQL status of each of `job_ids` that has a row (of `tenant_id`'s, when given)."""
    ids = list(dict.fromkeys(job_ids))
    found: dict[str, JobStatus] = {}
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        query = select(JobRow.id, JobRow.status).where(JobRow.id.in_(chunk))
        if tenant_id is not None:
            query = query.where(JobRow.tenant_id == tenant_id)
        for job_id, status in session.execute(query):
            found[job_id] = JobStatus(status)
    return found


def check_dependencies(depends_on: Sequence[str], statuses: dict[str, JobStatus]) -> None:
    """Refuse a dependency that does not exist, or that has already failed or been cancelled.

    Depending on a job that can no longer succeed is refused (422 `dependency_failed`) rather
    than accepted and cancelled at once: the caller learns it now, and nothing is written.
    """
    for job_id in depends_on:
        status = statuses.get(job_id)
        if status is None:
            raise InvalidInput(
                {"message": f"depends_on names job {job_id!r}, which does not exist", "id": job_id},
                code="unknown_dependency",
            )
        if status in DEAD_ENDS:
            raise InvalidInput(
                {
                    "message": f"depends_on names job {job_id!r}, which has already {_ended(status)}",
                    "id": job_id,
                    "status": status.value,
                },
                code="dependency_failed",
            )


def reason_for(status: JobStatus, error: str | None) -> str:
    """Why a dependency in `status` can no longer succeed, as `cancel_dependents` wants it."""
    if status == JobStatus.FAILED:
        return f"failed: {error}" if error else "failed"
    return "was cancelled"


def cancel_dependents_of_ended(*, session: Session, redis: Redis, job_ids: Iterable[str]) -> list[str]:
    """`cancel_dependents` for each of `job_ids` that has failed or been cancelled; the ids cancelled."""
    ids = list(dict.fromkeys(job_ids))
    cancelled: list[str] = []
    for start in range(0, len(ids), _ID_CHUNK):
        ended = session.execute(
            select(JobRow.id, JobRow.status, JobRow.error).where(
                JobRow.id.in_(ids[start : start + _ID_CHUNK]),
                JobRow.status.in_([status.value for status in DEAD_ENDS]),
            )
        ).all()
        for job_id, status, error in ended:
            reason = reason_for(JobStatus(status), error)
            cancelled += cancel_dependents(session=session, redis=redis, job_id=job_id, reason=reason)
    return cancelled


def cancel_dependents(*, session: Session, redis: Redis, job_id: str, reason: str) -> list[str]:
    """Cancel every job still waiting on `job_id`, and on those in turn; the ids cancelled.

    `reason` says what became of `job_id` ("failed: ValueError: bad", "was cancelled"); a direct
    dependent's error reads "dependency <job_id> <reason>". Only rows still `scheduled` are
    cancelled, with one conditional UPDATE each, so a repeated or concurrent call cancels nothing
    twice. Each level is committed before the jobs are cancelled in RQ: should Redis fail, SQL
    already says what happened, and RQ would only hold a deferred job that nothing releases.
    """
    root = f"dependency {job_id} {reason}"
    cancelled: list[str] = []
    frontier = [(job_id, root)]  # (a job that can no longer succeed, the error of its dependents)
    seen = {job_id}
    while frontier:
        level: list[str] = []
        for parent, error in frontier:
            for child in _waiting_on(session, parent):
                if child not in seen and _cancel_row(session, child, error[:_ERROR_MAX]):
                    level.append(child)
                seen.add(child)
        session.commit()
        for child in level:
            _cancel_in_rq(redis, child)
        cancelled.extend(level)
        # Further down, the error names the job's own dependency and the root cause.
        frontier = [(child, f"dependency {child} was cancelled because {root}") for child in level]
    if cancelled:
        log.info("job %s %s: cancelled %d dependent job(s)", job_id, reason, len(cancelled))
    return cancelled


def cancel_stranded(*, session: Session, redis: Redis) -> list[str]:
    """Cancel waiting jobs whose dependency has already failed or been cancelled; the ids.

    The worker cascades as a job ends; this repairs what a failed cascade write left behind (for
    the reconciler). It looks at every `scheduled` row with dependencies.
    """
    waiting = session.execute(
        select(JobRow.depends_on).where(
            JobRow.status == JobStatus.SCHEDULED.value, JobRow.depends_on.is_not(None)
        )
    ).scalars()
    named = {job_id for depends_on in waiting for job_id in depends_on or ()}
    return cancel_dependents_of_ended(session=session, redis=redis, job_ids=sorted(named))


def _waiting_on(session: Session, job_id: str) -> list[str]:
    """Ids of `scheduled` rows whose `depends_on` names `job_id`."""
    # A portable pre-filter on the JSON text (ids are [A-Za-z0-9_-]; `_` is a LIKE wildcard, so it
    # is escaped), then an exact check in Python.
    pattern = '%"' + job_id.replace("_", "\\_") + '"%'
    candidates = session.execute(
        select(JobRow.id, JobRow.depends_on).where(
            JobRow.status == JobStatus.SCHEDULED.value,
            JobRow.depends_on.is_not(None),
            cast(JobRow.depends_on, String).like(pattern, escape="\\"),
        )
    )
    return [child for child, depends_on in candidates if job_id in (depends_on or [])]


def _cancel_row(session: Session, job_id: str, error: str) -> bool:
    now = utcnow()
    moved = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.SCHEDULED.value)
        .values(
            status=JobStatus.CANCELLED.value,
            cancelled_at=now,
            cancelled_by=CANCELLED_BY,
            finished_at=now,
            error=error,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(moved.rowcount)  # type: ignore[attr-defined]


def _cancel_in_rq(redis: Redis, job_id: str) -> None:
    """Cancel the RQ job if it is still waiting; a job RQ no longer has needs nothing."""
    try:
        # The flag keeps a worker from running it even if RQ would release it later.
        redis.set(cancel_flag_key(job_id), CANCELLED_BY, ex=CANCEL_FLAG_TTL_S)
        job = LanesJob.fetch(job_id, connection=redis)
        if job.get_status(refresh=False) in _RQ_WAITING:
            job.cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass
    except RedisError:  # SQL already says cancelled; the deferred job is never released
        log.warning("job %s: cancelled in SQL, but Redis refused to cancel it in RQ", job_id, exc_info=True)


def _ended(status: JobStatus) -> str:
    return "failed" if status == JobStatus.FAILED else "been cancelled"
