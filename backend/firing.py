"""Firing schedules: each firing is a new job with its own id, its own row and `schedule_id` set.

The scheduler daemon calls `fire_due` with the schedules whose rq-scheduler entries are due. The
SQL row decides: a schedule fires when it is enabled and its `next_run_at` (the due time) has come.
Exactly once, however many schedulers run and however slow a pass is, because of two guards in
one transaction:

1. `next_run_at` moves on with a compare-and-set (`UPDATE … WHERE next_run_at = :due`): of two
   schedulers that both saw the same due time, one updates the row and the other matches nothing;
2. the job's id is derived from the schedule and its due time (`firing_job_id`), so a second
   insert of the same firing is refused by the primary key.

A schedule that was due several times while every scheduler was down fires **once** on return,
for the earliest missed time, and its next due time is the first one after now.

The job rows are committed before the jobs reach Redis, as on submit. If Redis refuses, the rows
stay `queued` and the reconciler (which the daemon runs every `LANES_RECONCILE_INTERVAL_S`) puts
them on their queues once `LANES_RECONCILE_GRACE_S` has passed: a firing is late, never lost.
A schedule whose task or params no longer validate fires a `failed` row with the reason, so the
failure shows in the schedule's jobs, and moves on to its next time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.cron import next_fire_times, next_run_at
from backend.enqueue import enqueue_rows
from backend.enums import JobStatus, Priority
from backend.errors import InvalidInput
from backend.job_requests import JobRequest, new_row
from backend.models import JobRow, ScheduleRow
from backend.schedule_entries import remove_entries, reschedule
from backend.tasks import TaskRegistry

log = logging.getLogger(__name__)

#: Schedules read from SQL per query.
READ_BATCH = 500


def firing_job_id(schedule_id: str, due: datetime) -> str:
    """The job id of a schedule's firing at `due`: `sched-<schedule id>-<UTC due, to the second>`."""
    return f"sched-{schedule_id}-{due.astimezone(UTC):%Y%m%dT%H%M%SZ}"


@dataclass
class FireReport:
    """What one pass did with the schedules it was given."""

    #: Job ids of the firings made and put on their queues.
    fired: list[str] = field(default_factory=list)
    #: Schedule ids another scheduler fired first (or that changed under this pass).
    taken: list[str] = field(default_factory=list)
    #: Schedule ids whose entry was due before their row: the entry was moved to `next_run_at`.
    early: list[str] = field(default_factory=list)
    #: Schedule ids disabled or deleted: their entries were removed.
    gone: list[str] = field(default_factory=list)
    #: Job ids of firings recorded `failed`, because the task or params no longer validate.
    refused: list[str] = field(default_factory=list)
    #: Job ids committed but not put on a queue (Redis refused): the reconciler enqueues them.
    not_enqueued: list[str] = field(default_factory=list)


def fire_due(
    *,
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    schedule_ids: Sequence[str],
    now: datetime,
) -> FireReport:
    """Fire each of `schedule_ids` that is enabled and due at `now`; move every entry on."""
    report = FireReport()
    rows = _schedules(session, schedule_ids)
    report.gone = [sid for sid in schedule_ids if sid not in rows or not rows[sid].enabled]
    moves: dict[str, datetime] = {}
    jobs: list[JobRow] = []
    for sid, row in rows.items():
        if not row.enabled:
            continue
        due = row.next_run_at
        if due is None or due > now:
            moves[sid] = due or _set_first_run(session, row, now)
            report.early.append(sid)
            continue
        following = next_fire_times(row.cron, row.timezone, after=max(now, due), n=1)[0]
        moved = session.execute(
            update(ScheduleRow)
            .where(ScheduleRow.id == sid, ScheduleRow.enabled.is_(True), ScheduleRow.next_run_at == due)
            .values(last_run_at=now, next_run_at=following, updated_at=ScheduleRow.updated_at)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            # Another scheduler fired it, or the API changed it: whoever moved the row moved the entry.
            report.taken.append(sid)
            continue
        moves[sid] = following
        job = _firing(settings, tasks, row, due=due, now=now)
        try:
            with session.begin_nested():
                session.add(job)
        except IntegrityError:
            report.taken.append(sid)  # this firing exists already; the due time still moves on
            continue
        if job.status == JobStatus.FAILED.value:
            report.refused.append(job.id)
        else:
            jobs.append(job)
    session.commit()
    if jobs:
        try:
            enqueue_rows(redis=redis, settings=settings, rows=jobs, succeeded=None)
            report.fired = [job.id for job in jobs]
        except RedisError as exc:
            report.not_enqueued = [job.id for job in jobs]
            log.warning("%d firing(s) not enqueued (%s); the reconciler enqueues them", len(jobs), exc)
            raise
    reschedule(redis, moves)
    remove_entries(redis, report.gone)
    for job in jobs:
        log.info("schedule %s fired job %s (%s) on %s", job.schedule_id, job.id, job.task, job.queue)
    return report


def _schedules(session: Session, schedule_ids: Sequence[str]) -> dict[str, ScheduleRow]:
    found: dict[str, ScheduleRow] = {}
    ids = list(dict.fromkeys(schedule_ids))
    for start in range(0, len(ids), READ_BATCH):
        query = select(ScheduleRow).where(ScheduleRow.id.in_(ids[start : start + READ_BATCH]))
        found.update((row.id, row) for row in session.scalars(query))
    return found


def _set_first_run(session: Session, row: ScheduleRow, now: datetime) -> datetime:
    """An enabled row without `next_run_at` (written behind the API's back) gets one."""
    first = next_run_at(row, now)
    assert first is not None
    session.execute(
        update(ScheduleRow)
        .where(ScheduleRow.id == row.id, ScheduleRow.next_run_at.is_(None))
        .values(next_run_at=first, updated_at=ScheduleRow.updated_at)
        .execution_options(synchronize_session=False)
    )
    return first


def _firing(
    settings: Settings, tasks: TaskRegistry, row: ScheduleRow, *, due: datetime, now: datetime
) -> JobRow:
    """The job row of `row`'s firing at `due`: queued, or failed if its task or params are refused."""
    job_id = firing_job_id(row.id, due)
    request = JobRequest(
        task=row.task,
        params=row.params or {},
        priority=Priority(row.priority),
        max_retries=row.max_retries,
        schedule_id=row.id,
    )
    try:
        return new_row(settings, tasks, request, now=now, statuses={}, earlier=(), job_id=job_id)
    except InvalidInput as exc:
        log.warning("schedule %s: firing %s refused: %s", row.id, job_id, exc.detail)
        return JobRow(
            id=job_id,
            task=row.task,
            queue=row.priority,
            priority=row.priority,
            status=JobStatus.FAILED.value,
            progress=0,
            params=row.params or {},
            error=f"not enqueued: the schedule's job is refused ({exc.code}): {exc.detail}",
            attempts=0,
            max_retries=row.max_retries,
            schedule_id=row.id,
            created_at=now,
            finished_at=now,
            updated_at=now,
            webhook_attempts=0,
            epoch=0,
        )
