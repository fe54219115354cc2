"""Firing schedules: each firing is a new job with its own id, its own row and `schedule_id` set.

The scheduler daemon calls `fire_due` with the schedules whose rq-scheduler entries are due. The
SQL row decides: a schedule fires when it is enabled and its `next_run_at` (the due time) has come.
Exactly once, however many schedulers run and however slow a pass is, because of two guards in
one transaction:

1. `next_run_at` moves on with a compare-and-set (`UPDATE … WHERE next_run_at = :due RETURNING
   id`): of two schedulers that both saw the same due time, one updates the row and the other
   matches nothing;
2. the job's id is derived from the schedule and its due time (`firing_job_id`), so a second
   insert of the same firing is refused by the primary key (`INSERT … ON CONFLICT DO NOTHING`).

A schedule that was due several times while every scheduler was down fires **once** on return,
for the earliest missed time, and its next due time is the first one after now.

The job rows are committed before the jobs reach Redis, as on submit. If Redis refuses, the rows
stay `queued` and the reconciler (which the daemon runs every `LANES_RECONCILE_INTERVAL_S`) puts
them on their queues once `LANES_RECONCILE_GRACE_S` has passed: a firing is late, never lost.
A schedule whose task or params no longer validate fires a `failed` row with the reason, so the
failure shows in the schedule's jobs, and moves on to its next time.

Each firing takes a quota credit from the schedule's tenant (`backend.quotas`), in the firing's
transaction. A tenant out of credits has its firings recorded as `cancelled` rows (by `quota`,
with the reason as their error) that never reach a queue: a skipped firing shows in the
schedule's jobs, and the schedule moves on to its next time.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend import metrics, quotas
from backend.config import Settings
from backend.cron import next_fire_times, next_run_at
from backend.db import upsert
from backend.enqueue import enqueue_rows
from backend.enums import JobStatus, Priority
from backend.errors import InvalidInput
from backend.job_requests import JobRequest, new_row_values
from backend.models import JobRow, ScheduleRow
from backend.schedule_entries import remove_entries, reschedule
from backend.tasks import TaskRegistry

log = logging.getLogger(__name__)

#: Schedules read from SQL per query.
READ_BATCH = 500
#: Due schedules fired per SQL and Redis transaction.
FIRE_CHUNK = 200


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
    #: Job ids of firings recorded `cancelled`, because their tenant had no quota left.
    skipped: list[str] = field(default_factory=list)


def fire_due(
    *,
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    schedule_ids: Sequence[str],
    now: datetime,
    between_chunks: Callable[[], None] | None = None,
) -> FireReport:
    """Fire each of `schedule_ids` that is enabled and due at `now`; move every entry on.

    The due ones are fired `FIRE_CHUNK` at a time, each chunk in one SQL transaction and one Redis
    transaction, so the first jobs reach their queues while later ones are still being written;
    `between_chunks` runs after each (the daemon keeps its lock and heartbeat alive there).
    """
    report = FireReport()
    rows = _schedules(session, schedule_ids)
    report.gone = [sid for sid in schedule_ids if sid not in rows or not rows[sid].enabled]
    early: dict[str, datetime] = {}
    due_rows: list[ScheduleRow] = []
    for sid, row in rows.items():
        if not row.enabled:
            continue
        if row.next_run_at is None or row.next_run_at > now:
            early[sid] = row.next_run_at or _set_first_run(session, row, now)
            continue
        due_rows.append(row)
    session.commit()
    report.early = list(early)
    reschedule(redis, early)
    remove_entries(redis, report.gone)
    following: dict[tuple[str, str, datetime], datetime] = {}
    for start in range(0, len(due_rows), FIRE_CHUNK):
        _fire_chunk(
            session, redis, settings, tasks, due_rows[start : start + FIRE_CHUNK], now, report, following
        )
        if between_chunks is not None:
            between_chunks()
    return report


def _fire_chunk(
    session: Session,
    redis: Redis,
    settings: Settings,
    tasks: TaskRegistry,
    chunk: Sequence[ScheduleRow],
    now: datetime,
    report: FireReport,
    following: dict[tuple[str, str, datetime], datetime],
) -> None:
    """Move the chunk's due times on (compare-and-set), insert their firings, commit, enqueue."""
    groups: dict[tuple[datetime, datetime], list[ScheduleRow]] = defaultdict(list)
    for row in chunk:
        assert row.next_run_at is not None
        key = (row.cron, row.timezone, max(now, row.next_run_at))
        if key not in following:
            following[key] = next_fire_times(row.cron, row.timezone, after=key[2], n=1)[0]
        groups[(row.next_run_at, following[key])].append(row)
    moves: dict[str, datetime] = {}
    won: list[ScheduleRow] = []
    for (due, after), group in groups.items():
        # One UPDATE per (due, next) pair: rows of the same cron and due time move together.
        moved = set(
            session.scalars(
                update(ScheduleRow)
                .where(
                    ScheduleRow.id.in_([row.id for row in group]),
                    ScheduleRow.enabled.is_(True),
                    ScheduleRow.next_run_at == due,
                )
                .values(last_run_at=now, next_run_at=after, updated_at=ScheduleRow.updated_at)
                .returning(ScheduleRow.id)
                .execution_options(synchronize_session=False)
            )
        )
        for row in group:
            if row.id in moved:
                won.append(row)
                moves[row.id] = after
            else:
                # Another scheduler fired it, or the API changed it: whoever moved the row moved the entry.
                report.taken.append(row.id)
    jobs = [_firing(settings, tasks, row, due=row.next_run_at, now=now) for row in won if row.next_run_at]
    inserted = _insert_new(session, jobs)
    queued: list[JobRow] = []
    for job in jobs:
        if job.id not in inserted:
            report.taken.append(job.schedule_id or "")  # this firing exists already; the time still moves on
        elif job.status == JobStatus.FAILED.value:
            report.refused.append(job.id)
        else:
            queued.append(job)
    skipped = _charge(session, settings, queued, now)
    session.commit()
    report.skipped.extend(job.id for job in skipped)
    queued = [job for job in queued if job.id not in set(report.skipped)]
    if queued:
        try:
            enqueue_rows(redis=redis, settings=settings, rows=queued, succeeded=None)
        except RedisError as exc:
            report.not_enqueued.extend(job.id for job in queued)
            log.warning("%d firing(s) not enqueued (%s); the reconciler enqueues them", len(queued), exc)
            raise
        report.fired.extend(job.id for job in queued)
        fired = Counter(job.task for job in queued)
        metrics.record(redis, [("lanes_jobs_submitted", {"task": task}, n) for task, n in fired.items()])
    reschedule(redis, moves)
    for job in queued:
        log.info("schedule %s fired job %s (%s) on %s", job.schedule_id, job.id, job.task, job.queue)


def _charge(session: Session, settings: Settings, jobs: Sequence[JobRow], now: datetime) -> list[JobRow]:
    """Take a credit from each firing's tenant; the firings it had none for, now `cancelled` rows."""
    by_tenant: dict[str, list[JobRow]] = defaultdict(list)
    for job in jobs:
        if job.tenant_id is not None:
            by_tenant[job.tenant_id].append(job)
    skipped: list[JobRow] = []
    for tenant_id, group in by_tenant.items():
        granted = quotas.take_up_to(
            session=session, settings=settings, tenant_id=tenant_id, jobs=len(group), now=now
        )
        skipped.extend(group[granted:])
    if not skipped:
        return []
    reason = "skipped: the schedule's tenant has no quota left (GET /api/v1/credits)"
    values = {
        "status": JobStatus.CANCELLED.value,
        "cancelled_at": now,
        "cancelled_by": "quota",
        "finished_at": now,
        "error": reason,
        "updated_at": now,
    }
    session.execute(
        update(JobRow)
        .where(JobRow.id.in_([job.id for job in skipped]))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    for job in skipped:
        for name, value in values.items():
            setattr(job, name, value)
        log.warning("schedule %s: firing %s skipped, its tenant is over quota", job.schedule_id, job.id)
    return skipped


def _insert_new(session: Session, jobs: Sequence[JobRow]) -> set[str]:
    """Insert the firings' rows in one statement; the ids inserted (an existing id is refused)."""
    if not jobs:
        return set()
    columns = [column.key for column in JobRow.__table__.columns]
    values = [{name: getattr(job, name) for name in columns} for job in jobs]
    statement = (
        upsert(session, JobRow)
        .values(values)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(JobRow.id)
    )
    return set(session.scalars(statement))


def job_request(row: ScheduleRow) -> JobRequest:
    """What one firing of `row` submits: its task, params, priority and retries, with `schedule_id`."""
    return JobRequest(
        task=row.task,
        params=row.params or {},
        priority=Priority(row.priority),
        max_retries=row.max_retries,
        schedule_id=row.id,
        webhook_url=row.webhook_url,
    )


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
    try:
        values = new_row_values(
            settings, tasks, job_request(row), now=now, statuses={}, earlier=(), job_id=job_id
        )
        return JobRow(**values, tenant_id=row.tenant_id)
    except InvalidInput as exc:
        log.warning("schedule %s: firing %s refused: %s", row.id, job_id, exc.detail)
        return JobRow(
            id=job_id,
            tenant_id=row.tenant_id,
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
