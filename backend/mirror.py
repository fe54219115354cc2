"""Moving a job's SQL row through its states, forward only.

A row's position is (epoch, attempts, rank of status): within one attempt it climbs
scheduled < queued < started < retrying < succeeded | failed | cancelled, and a new attempt starts
the ladder again. Within an epoch the final statuses are final; only a requeue, which opens the
next epoch, moves a row on from them, and then nothing about an earlier epoch applies. A write is
applied with one conditional UPDATE that matches only while the row is behind the new position, so
a late, repeated or out-of-order write changes nothing, on SQLite and PostgreSQL alike. A row that
does not exist (a job put on a queue behind the API's back) is created from what the worker knows
(upsert).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from backend.db import upsert, utcnow
from backend.enums import STATUS_RANK, TERMINAL_STATUSES, JobStatus, Priority
from backend.models import JobRow

_rank = case({status.value: rank for status, rank in STATUS_RANK.items()}, value=JobRow.status, else_=99)


def advance(
    session: Session,
    *,
    job_id: str,
    status: JobStatus,
    attempt: int,
    epoch: int = 0,
    values: dict[str, Any] | None = None,
    create: dict[str, Any] | None = None,
) -> bool:
    """Move row `job_id` to `status` at `attempt` if that is forward; True when it moved.

    `create` holds the columns for a row that does not exist yet; without it a missing row is left
    missing. The caller commits.
    """
    new_rank = STATUS_RANK[status]
    changes = {
        **(values or {}),
        "status": status.value,
        "attempts": attempt,
        "epoch": epoch,
        "updated_at": utcnow(),
    }
    statement = (
        update(JobRow)
        .where(
            JobRow.id == job_id,
            or_(
                JobRow.epoch < epoch,
                and_(
                    JobRow.epoch == epoch,
                    JobRow.status.not_in([s.value for s in TERMINAL_STATUSES]),
                    or_(JobRow.attempts < attempt, and_(JobRow.attempts == attempt, _rank < new_rank)),
                ),
            ),
        )
        .values(**changes)
        .execution_options(synchronize_session=False)
    )
    if session.execute(statement).rowcount:  # type: ignore[attr-defined]
        return True
    if create is None or session.get(JobRow, job_id) is not None:
        return False
    _insert_if_missing(session, {**create, "id": job_id, **changes})
    return True


def _insert_if_missing(session: Session, row: dict[str, Any]) -> None:
    row.setdefault("created_at", utcnow())
    row.setdefault("params", {})
    session.execute(upsert(session, JobRow).values(**row).on_conflict_do_nothing(index_elements=["id"]))


def cancel(session: Session, row: JobRow, *, by: str, reason: str | None = None) -> bool:
    """Move `row` to `cancelled` at its own epoch and attempt, saying who did it; the caller commits."""
    now = utcnow()
    return advance(
        session,
        job_id=row.id,
        status=JobStatus.CANCELLED,
        attempt=row.attempts,
        epoch=row.epoch,
        values={
            "cancelled_at": now,
            "cancelled_by": by,
            "finished_at": now,
            "error": reason or f"cancelled by {by}",
            "next_retry_at": None,
        },
    )


def record_progress(
    session: Session, *, job_id: str, attempt: int, progress: int, stage: str | None, epoch: int = 0
) -> None:
    """Store progress on a started row of this attempt; anything later is left alone."""
    values: dict[str, Any] = {"progress": progress}
    if stage is not None:
        values["stage"] = stage
    session.execute(
        update(JobRow)
        .where(
            JobRow.id == job_id,
            JobRow.status == JobStatus.STARTED.value,
            JobRow.attempts == attempt,
            JobRow.epoch == epoch,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def started_values(*, worker: str | None, started_at: datetime | None = None) -> dict[str, Any]:
    return {
        "started_at": started_at or utcnow(),
        "worker": worker,
        "next_retry_at": None,
        "finished_at": None,
        "progress": 0,
        "stage": None,
    }


def succeeded_values(*, result: Any, finished_at: datetime | None = None) -> dict[str, Any]:
    return {
        "result": result,
        "progress": 100,
        "finished_at": finished_at or utcnow(),
        "error": None,
        "traceback": None,
        "next_retry_at": None,
    }


def failed_values(
    *, error: str, traceback: str | None, finished_at: datetime | None = None
) -> dict[str, Any]:
    return {
        "error": error,
        "traceback": traceback,
        "finished_at": finished_at or utcnow(),
        "next_retry_at": None,
    }


def retrying_values(*, error: str, traceback: str | None, next_retry_at: datetime | None) -> dict[str, Any]:
    return {"error": error, "traceback": traceback, "next_retry_at": next_retry_at}


#: The last line of the traceback of a run RQ killed at its timeout.
_TIMED_OUT = re.compile(r"JobTimeoutException: Task exceeded maximum timeout value \((\d+) seconds\)$")


def error_line(exc_string: str) -> str:
    """The one line that says what went wrong: the last non-blank line of a traceback.

    A run killed at its timeout reads "timed out after N s" (the traceback keeps RQ's words).
    """
    lines = [line.strip() for line in (exc_string or "").splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    timed_out = _TIMED_OUT.search(last)
    if timed_out:
        return f"timed out after {timed_out.group(1)} s"
    return last[:2000]


def row_for_unknown_job(*, task: str, queue: str, params: Any, max_retries: int) -> dict[str, Any]:
    """Columns for a row a worker creates for a job it found without one."""
    priority = queue if queue in {p.value for p in Priority} else Priority.NORMAL.value
    return {
        "task": task,
        "queue": queue,
        "priority": priority,
        "params": params if isinstance(params, dict) else {"args": params},
        "max_retries": max_retries,
        "enqueued_at": utcnow(),
    }


def count_rows(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(JobRow)) or 0
