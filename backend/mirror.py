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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Integer, Table, Update, and_, bindparam, case, func, literal, or_, select, update
from sqlalchemy.orm import Session

from backend.db import upsert, utcnow
from backend.enums import STATUS_RANK, TERMINAL_STATUSES, JobStatus, Priority
from backend.models import JobRow

_jobs = cast(Table, JobRow.__table__)
_rank = case({status.value: rank for status, rank in STATUS_RANK.items()}, value=_jobs.c.status, else_=99)
_TERMINAL = [status.value for status in TERMINAL_STATUSES]
#: The conditional UPDATE of `advance`, one per set of columns it writes, built once: a Core
#: statement with bound parameters that SQLAlchemy compiles once and finds in its cache by identity
#: after that. (An ORM `update(JobRow)` built per call cost four times as much per write.)
_statements: dict[tuple[str, ...], Update] = {}


def _advance_statement(columns: tuple[str, ...]) -> Update:
    statement = _statements.get(columns)
    if statement is None:
        epoch, attempt = bindparam("at_epoch", type_=Integer), bindparam("at_attempt", type_=Integer)
        statement = (
            update(_jobs)
            .where(
                _jobs.c.id == bindparam("at_id"),
                or_(
                    _jobs.c.epoch < epoch,
                    and_(
                        _jobs.c.epoch == epoch,
                        _jobs.c.status.not_in([literal(status) for status in _TERMINAL]),  # no expanding list
                        or_(
                            _jobs.c.attempts < attempt,
                            and_(_jobs.c.attempts == attempt, _rank < bindparam("at_rank")),
                        ),
                    ),
                ),
            )
            .values({column: bindparam(f"set_{column}") for column in columns})
        )
        _statements[columns] = statement
    return statement


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
    changes = {
        **(values or {}),
        "status": status.value,
        "attempts": attempt,
        "epoch": epoch,
        "updated_at": utcnow(),
    }
    parameters = _parameters(job_id, status, attempt, epoch, values, changes["updated_at"])
    if session.execute(_advance_statement(tuple(sorted(changes))), parameters).rowcount:  # type: ignore[attr-defined]
        return True
    if create is None or session.get(JobRow, job_id) is not None:
        return False
    _insert_if_missing(session, {**create, "id": job_id, **changes})
    return True


@dataclass(frozen=True)
class Move:
    """One `advance`, as data: what a write-behind batches."""

    job_id: str
    status: JobStatus
    attempt: int
    epoch: int = 0
    values: dict[str, Any] | None = None
    #: The columns of a row to create if it is missing, computed only then.
    create: Callable[[], dict[str, Any]] | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(sorted({*(self.values or {}), "status", "attempts", "epoch", "updated_at"}))

    def apply(self, session: Session) -> bool:
        create = self.create() if self.create is not None else None
        return advance(
            session,
            job_id=self.job_id,
            status=self.status,
            attempt=self.attempt,
            epoch=self.epoch,
            values=self.values,
            create=create,
        )


def advance_all(session: Session, moves: Sequence[Move]) -> None:
    """Apply `moves`, each job's in its order; moves of the same columns go in one `executemany`.

    A job's moves that climb one after the other (`started`, then `succeeded`, of one attempt)
    become one UPDATE (`coalesce`). The rest are taken in waves, the first move of every job, then
    the second, and so on, so that a job's `started` lands before its `succeeded` while every job's
    `started` shares one statement. When a group's rows did not all move (a row to create, or a
    write that came late), its moves are applied again one by one: a row that moved does not move
    twice.
    """
    waves: list[list[Move]] = []
    taken: dict[str, int] = {}
    for move in coalesce(moves):
        index = taken.get(move.job_id, 0)
        taken[move.job_id] = index + 1
        if index == len(waves):
            waves.append([])
        waves[index].append(move)
    now = utcnow()
    for wave in waves:
        shapes: dict[tuple[str, ...], list[Move]] = {}
        for move in wave:
            shapes.setdefault(move.columns, []).append(move)
        for columns, group in shapes.items():
            if len(group) > 1:
                parameters = [
                    _parameters(m.job_id, m.status, m.attempt, m.epoch, m.values, now) for m in group
                ]
                if session.execute(_advance_statement(columns), parameters).rowcount == len(group):  # type: ignore[attr-defined]
                    continue
            for move in group:
                move.apply(session)


def coalesce(moves: Sequence[Move]) -> list[Move]:
    """`moves` with each run of one job's moves that climb folded into one move: the last one's
    status and position, every move's values (a later one's win), the first `create`.

    Applied one by one, a climbing run leaves the row as the folded move does: both apply to a row
    behind the run's first move, and neither to a row at or past its last. Only a row already
    between the two (a late `started` behind its attempt's `retrying`) also gets the first move's
    columns, that attempt's own start. A move does not fold onto a final status, which ends its
    epoch, nor onto another epoch's.
    """
    folded: list[Move] = []
    latest: dict[str, int] = {}  # job id -> its latest move's index in `folded`
    for move in moves:
        index = latest.get(move.job_id)
        if index is not None and _climbs(folded[index], move):
            earlier = folded[index]
            folded[index] = Move(
                job_id=move.job_id,
                status=move.status,
                attempt=move.attempt,
                epoch=move.epoch,
                values={**(earlier.values or {}), **(move.values or {})},
                create=earlier.create or move.create,
            )
        else:
            latest[move.job_id] = len(folded)
            folded.append(move)
    return folded


def _climbs(earlier: Move, later: Move) -> bool:
    return (
        later.epoch == earlier.epoch
        and earlier.status not in TERMINAL_STATUSES
        and (later.attempt, STATUS_RANK[later.status]) > (earlier.attempt, STATUS_RANK[earlier.status])
    )


def _parameters(
    job_id: str, status: JobStatus, attempt: int, epoch: int, values: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    changes = {
        **(values or {}),
        "status": status.value,
        "attempts": attempt,
        "epoch": epoch,
        "updated_at": now,
    }
    parameters = {f"set_{column}": value for column, value in changes.items()}
    parameters.update(at_id=job_id, at_epoch=epoch, at_attempt=attempt, at_rank=STATUS_RANK[status])
    return parameters


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
