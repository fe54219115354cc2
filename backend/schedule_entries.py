"""A schedule's entry in Redis: what rq-scheduler's loop sees, kept in step with the SQL row.

Each enabled schedule has one rq-scheduler entry, written with rq-scheduler's own API and the
project's JSON job class: the template job hash `rq:job:schedule-<id>` (task, params, queue, and
in its meta the schedule's id, cron, time zone and a revision) and its member `schedule-<id>` in
`rq:scheduler:scheduled_jobs`, scored with the schedule's `next_run_at` in unix seconds. The
template never runs itself: when it is due, the scheduler daemon fires the schedule as a new job
(`backend.firing`). Ids are deterministic, so writing an entry twice leaves one.

SQL is the source of truth. The API writes an entry as soon as it changes a schedule; the daemon's
`sync_entries` makes every entry match the table every `LANES_SCHEDULER_SYNC_S`, so a Redis flush,
a restart or a write the API could not make heals within one sync.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq_scheduler import Scheduler
from rq_scheduler.utils import to_unix
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.cron import next_run_at
from backend.models import ScheduleRow
from backend.queues import LanesJob

log = logging.getLogger(__name__)

#: rq-scheduler's sorted set of entries (member: entry id, score: due time in unix seconds).
ENTRIES_KEY = Scheduler.scheduled_jobs_key
ENTRY_PREFIX = "schedule-"


def entry_id(schedule_id: str) -> str:
    return f"{ENTRY_PREFIX}{schedule_id}"


def schedule_id_of(entry: str) -> str | None:
    """The schedule an entry id belongs to; None for an entry Lanes did not write."""
    return entry[len(ENTRY_PREFIX) :] if entry.startswith(ENTRY_PREFIX) else None


def rq_scheduler(redis: Redis) -> Scheduler:
    """rq-scheduler's client with the project's JSON job class, for writing entries."""
    return Scheduler(connection=redis, job_class=LanesJob)


def revision(row: ScheduleRow) -> str:
    """A digest of what an entry copies from its row: an entry with another revision is rewritten."""
    fields = [row.task, row.params, row.priority, row.max_retries, row.cron, row.timezone]
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def put_entry(redis: Redis, row: ScheduleRow) -> None:
    """Write (or rewrite) the entry of an enabled schedule, due at its `next_run_at`."""
    if not row.enabled or row.next_run_at is None:
        remove_entries(redis, [row.id])
        return
    rq_scheduler(redis).schedule(
        row.next_run_at,
        row.task,
        kwargs=row.params or {},
        id=entry_id(row.id),
        queue_name=row.priority,
        meta={
            "schedule_id": row.id,
            "cron": row.cron,
            "timezone": row.timezone,
            "revision": revision(row),
        },
    )


def remove_entries(redis: Redis, schedule_ids: Sequence[str]) -> None:
    """Take schedules' entries out of rq-scheduler's set, and their template hashes with them."""
    if not schedule_ids:
        return
    entries = [entry_id(schedule_id) for schedule_id in schedule_ids]
    with redis.pipeline() as pipe:
        pipe.zrem(ENTRIES_KEY, *entries)
        pipe.delete(*[LanesJob.key_for(entry) for entry in entries])
        pipe.execute()


def reschedule(redis: Redis, due: dict[str, datetime]) -> None:
    """Move entries that exist to new due times (schedule id -> due); none is created."""
    if due:
        redis.zadd(ENTRIES_KEY, {entry_id(sid): to_unix(at) for sid, at in due.items()}, xx=True)


def write_through(redis: Redis, row: ScheduleRow | None, *, schedule_id: str) -> bool:
    """The API's write after a change: put or remove the entry now. False if Redis refused.

    A refusal is logged and left to the daemon's next sync; the SQL change stands either way.
    """
    try:
        if row is None:
            remove_entries(redis, [schedule_id])
        else:
            put_entry(redis, row)
        return True
    except RedisError as exc:
        log.warning("schedule %s: Redis entry not written (%s); the next sync writes it", schedule_id, exc)
        return False


@dataclass
class SyncReport:
    """What one sync changed: ids of the schedules whose entries were written or removed."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return len(self.written) + len(self.removed)


def sync_entries(*, session: Session, redis: Redis, now: datetime) -> SyncReport:
    """Make rq-scheduler's entries match the schedules table; repeated, it changes nothing.

    An enabled schedule gets an entry due at its `next_run_at` with its current revision (an
    enabled row without `next_run_at` gets one computed first); an entry with no enabled schedule
    behind it is removed. Entries Lanes did not write are left alone.
    """
    rows = list(session.scalars(select(ScheduleRow).where(ScheduleRow.enabled.is_(True))))
    for row in rows:
        if row.next_run_at is None:
            row.next_run_at = next_run_at(row, now)
            session.execute(
                update(ScheduleRow)
                .where(ScheduleRow.id == row.id, ScheduleRow.next_run_at.is_(None))
                .values(next_run_at=row.next_run_at, updated_at=ScheduleRow.updated_at)
            )
    session.commit()
    wanted = {row.id: row for row in rows}
    entries: list[tuple[bytes, float]] = redis.zrange(ENTRIES_KEY, 0, -1, withscores=True)  # type: ignore[assignment]
    scores = {
        sid: int(score) for member, score in entries if (sid := schedule_id_of(_text(member))) is not None
    }
    revisions = _entry_revisions(redis, list(wanted))
    report = SyncReport()
    for sid, row in wanted.items():
        assert row.next_run_at is not None
        if scores.get(sid) != to_unix(row.next_run_at) or revisions.get(sid) != revision(row):
            put_entry(redis, row)
            report.written.append(sid)
    report.removed = sorted(set(scores) - set(wanted))
    remove_entries(redis, report.removed)
    if report.changed:
        log.info("schedule sync: %d entries written, %d removed", len(report.written), len(report.removed))
    return report


def _entry_revisions(redis: Redis, schedule_ids: list[str]) -> dict[str, str | None]:
    """Each template hash's revision (None where the hash is missing or unreadable)."""
    with redis.pipeline(transaction=False) as pipe:
        for sid in schedule_ids:
            pipe.hget(LanesJob.key_for(entry_id(sid)), "meta")
        raw = pipe.execute()
    found: dict[str, str | None] = {}
    for sid, meta in zip(schedule_ids, raw, strict=True):
        found[sid] = _meta(meta).get("revision")
    return found


def _meta(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
