"""The reconciler: SQL rows and RQ made to agree again, both sides repaired.

`reconcile()` first lets RQ deal with the running jobs whose worker stopped heartbeating (RQ's own
StartedJobRegistry cleanup: retried if retries are left, else failed), then walks the unfinished
rows (scheduled, queued, started, retrying) in keyset batches and asks Redis where RQ holds each
job (`backend.whereabouts`). Each row gets one verdict, and `backend.repairs` one repair:

- **held**: RQ has the job on its queue, taken by a worker, running, or waiting in a registry, and
  the row says so. Nothing to do.
- **lagging**: RQ has moved on (finished, failed, cancelled, running, waiting for a retry) and the
  row is behind. `sync_from_rq` brings it up to RQ's record.
- **lost**: RQ holds the job nowhere: deleted from its list behind the platform's back, Redis
  restarted empty, the API or a requeue died between its SQL commit and its enqueue. What is left
  of it in Redis is cleared and the job goes back on its queue with `enqueue_row`; a job that was
  running when it was lost counts that attempt, and fails with "worker died" when none are left.
- **abandoned**: RQ says started, but no live worker runs it (its worker's key is gone, or it has
  no execution in `rq:wip:<queue>`). It is retried or failed the way RQ's cleanup would.

A row that ends failed or cancelled here takes the jobs waiting on it along (`cancel_dependents`),
and a waiting row whose dependency has already failed or been cancelled is cancelled too.

Two guards keep a repair from running a job twice. A row touched within `LANES_RECONCILE_GRACE_S`
is left alone (a submit or requeue in flight). And a job is only judged lost or abandoned when two
looks `CONFIRM_S` apart agree: a worker passes through the moment between taking a job off its
queue and registering its execution in milliseconds, and a look that falls into it sees the job
nowhere. Repairs of running jobs hold the queue's RQ maintenance lock, as a worker's own registry
cleaning does, so the two never handle one job twice.

How soon a dead worker is noticed: a busy worker beats every `LANES_WORKER_HEARTBEAT_S` (5 s) and
each beat keeps `lanes:alive:<worker>` for three beats. After a SIGKILL that key lapses within
15 s (a worker pool drops the key of a process that died at once), and the scheduler's quick pass
(every `LANES_DEAD_WORKER_SWEEP_S`, 10 s) finds the job abandoned once its row is older than the
grace period: in about 15–45 s. The quick pass looks at `started` rows, and at the rows of the jobs
RQ has as running whose row does not say so yet (a simple worker that died before its write-behind
committed `started`). RQ's own signs (the execution's deadline in `rq:wip:<queue>` and the
worker's key, 60 s past the last beat) are the fallback.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from redis import Redis
from redis.exceptions import LockError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from backend import dependencies, webhooks
from backend.config import Settings, get_settings
from backend.db import engine_for, make_sessionmaker, session_scope, utcnow
from backend.enums import QUEUE_ORDER, WEBHOOK_QUEUE, JobStatus, Priority
from backend.logs import configure_logging
from backend.models import JobRow
from backend.queues import queue_for, redis_for
from backend.repairs import (
    WORKER_DIED,
    abandon,
    free_dead_schedulers,
    let_rq_clean_up,
    mirror_abandoned,
    put_back,
    sync_row,
)
from backend.whereabouts import Verdict, Whereabouts, look, queue_names, verdict

__all__ = ["WORKER_DIED", "ReconcileReport", "reconcile"]

log = logging.getLogger("backend.reconcile")  # also when run as __main__

BATCH_SIZE = 500
#: Seconds between the two looks that must agree before a job counts as lost or abandoned.
CONFIRM_S = 1.0
#: One run at a time: two runs could both find a job lost and enqueue it twice.
RUN_LOCK_KEY = "lanes:reconcile:lock"
RUN_LOCK_TTL_S = 300
UNFINISHED = (JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.STARTED, JobStatus.RETRYING)


@dataclass
class ReconcileReport:
    """What one run found and repaired. Each list holds job ids."""

    checked: int = 0
    #: lost jobs put back on their queue
    requeued: list[str] = field(default_factory=list)
    #: running jobs whose worker died, given their next attempt
    retried: list[str] = field(default_factory=list)
    #: running jobs whose worker died with no attempts left: failed, "worker died"
    failed: list[str] = field(default_factory=list)
    #: rows brought up to RQ's record
    synced: list[str] = field(default_factory=list)
    #: lost jobs with a cancel request outstanding: marked cancelled instead of run
    cancelled: list[str] = field(default_factory=list)
    #: webhook events of ended jobs that nothing had emitted (a crash, a cascade): now emitted
    webhooks: list[str] = field(default_factory=list)
    #: repairs that raised (logged), and "queue:<name>" for a queue RQ's cleanup failed on;
    #: the next run tries again
    errors: list[str] = field(default_factory=list)
    #: queued rows not searched for, because their queue is too long to search (see whereabouts)
    unchecked: int = 0
    #: scheduler locks freed because the worker holding them died
    schedulers_freed: int = 0
    duration_s: float = 0.0
    #: another run held the lock, so this one did nothing
    busy: bool = False

    @property
    def repaired(self) -> int:
        return sum(
            len(ids) for ids in (self.requeued, self.retried, self.failed, self.synced, self.cancelled)
        )

    def summary(self) -> str:
        if self.busy:
            return "another reconcile run is under way; nothing done"
        counts = ", ".join(
            f"{name} {len(getattr(self, name))}"
            for name in ("requeued", "retried", "failed", "synced", "cancelled", "webhooks", "errors")
        )
        unchecked = f", {self.unchecked} unchecked" if self.unchecked else ""
        return f"checked {self.checked} rows in {self.duration_s:.2f} s: {counts}{unchecked}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "repaired": self.repaired}


def reconcile(
    *,
    sessions: sessionmaker[Session],
    redis: Redis,
    settings: Settings,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    only_running: bool = False,
) -> ReconcileReport:
    """Compare unfinished rows with RQ and repair both sides; what was done.

    `now` is when the run counts as happening (default: now): rows touched within the grace period
    before it are skipped, and an execution whose deadline is before it counts as abandoned.
    `only_running` looks at `started` rows alone, and skips the webhook sweep: the scheduler's quick
    pass for dead workers' jobs, every `LANES_DEAD_WORKER_SWEEP_S`.
    """
    started = time.monotonic()
    lock = redis.lock(RUN_LOCK_KEY, timeout=RUN_LOCK_TTL_S, blocking=False)
    if not lock.acquire():
        log.info("reconcile: another run holds %s; this one does nothing", RUN_LOCK_KEY)
        return ReconcileReport(busy=True)
    try:
        run = _Run(sessions=sessions, redis=redis, settings=settings, now=now or utcnow())
        names = queue_names(redis, [q.value for q in QUEUE_ORDER])
        run.free_schedulers(names)
        for name in names:
            run.rq_cleanup(name)
        cutoff = run.now - timedelta(seconds=settings.reconcile_grace_s)
        batches: Iterator[list[JobRow]]
        if only_running:
            batches = itertools.chain(
                _unfinished_rows(
                    sessions, cutoff=cutoff, batch_size=batch_size, statuses=(JobStatus.STARTED,)
                ),
                _rows_started_in_rq(sessions, redis, names, cutoff=cutoff, batch_size=batch_size),
            )
        else:
            batches = _unfinished_rows(sessions, cutoff=cutoff, batch_size=batch_size)
        for rows in batches:
            lock.reacquire()  # a long run keeps the lock for another RUN_LOCK_TTL_S
            run.report.checked += len(rows)
            run.batch(rows)
            if len(run.suspects) >= batch_size:
                run.confirm()
        run.confirm()
        if not only_running:
            run.sweep_webhooks()
    finally:
        with contextlib.suppress(LockError):
            lock.release()

    run.report.duration_s = round(time.monotonic() - started, 3)
    # The quick pass runs every few seconds: only what it did is worth a line at INFO.
    quiet = only_running and not run.report.repaired and not run.report.errors
    log.log(logging.DEBUG if quiet else logging.INFO, "reconcile: %s", run.report.summary())
    return run.report


@dataclass
class _Run:
    """One reconcile run: what it works with, and what it has done so far."""

    sessions: sessionmaker[Session]
    redis: Redis
    settings: Settings
    now: datetime
    report: ReconcileReport = field(default_factory=ReconcileReport)
    #: rows that looked lost or abandoned, with that first look; confirmed by `confirm()`
    suspects: list[tuple[JobRow, Whereabouts]] = field(default_factory=list)
    last_look: float = 0.0

    def sweep_webhooks(self) -> None:
        """Emit the end events nothing emitted: the worker crashed after the commit, a cascade, a sync."""
        try:
            with self.sessions() as session:
                self.report.webhooks = webhooks.sweep(
                    session=session, redis=self.redis, settings=self.settings, now=self.now
                )
        except Exception:
            log.exception("reconcile: the webhook sweep failed; the next run tries again")
            self.report.errors.append("webhooks")

    def free_schedulers(self, names: Sequence[str]) -> None:
        """Free the scheduler locks of dead workers, so retries and delayed jobs keep moving."""
        try:
            self.report.schedulers_freed = len(
                free_dead_schedulers(self.redis, list(dict.fromkeys([*names, WEBHOOK_QUEUE])))
            )
        except Exception:
            log.exception("reconcile: freeing dead workers' scheduler locks failed")
            self.report.errors.append("scheduler-locks")

    def rq_cleanup(self, queue_name: str) -> None:
        """RQ's own cleanup of the queue's abandoned jobs, then their rows."""
        try:
            abandoned = let_rq_clean_up(self.redis, queue_name, self.now)
        except Exception:
            log.exception("reconcile: RQ's cleanup of queue %s failed", queue_name)
            self.report.errors.append(f"queue:{queue_name}")
            return
        for job_id, attempt in abandoned:
            self.repair(job_id, partial(mirror_abandoned, redis=self.redis, job_id=job_id, attempt=attempt))

    def batch(self, rows: Sequence[JobRow]) -> None:
        """Look at a batch of rows in Redis; repair the lagging ones, keep the suspects for later."""
        self.last_look = time.monotonic()
        seen = look(self.redis, rows, now=self.now)
        for row in rows:
            where = seen[row.id]
            self.report.unchecked += where.unchecked
            found = verdict(row, where)
            if found == Verdict.LAGGING:
                self.repair(row.id, partial(sync_row, redis=self.redis, row=row))
            elif found in (Verdict.LOST, Verdict.ABANDONED):
                self.suspects.append((row, where))
        self._cascade(rows)

    def confirm(self) -> None:
        """Look at the suspects again `CONFIRM_S` after the first look; repair those that agree."""
        if not self.suspects:
            return
        suspects, self.suspects = self.suspects, []
        time.sleep(max(0.0, CONFIRM_S - (time.monotonic() - self.last_look)))
        again = look(self.redis, [row for row, _ in suspects], now=self.now)
        for row, first in suspects:
            second = again[row.id]
            found = verdict(row, second)
            if found != verdict(row, first) or second.status != first.status:
                continue  # it moved between the looks: a worker has it, or RQ is busy with it
            if found == Verdict.LOST:
                repair = partial(put_back, redis=self.redis, settings=self.settings, row=row, where=second)
                self.repair(row.id, repair)
            elif found == Verdict.ABANDONED:
                self.repair(row.id, partial(abandon, redis=self.redis, row=row, where=second))

    def repair(self, job_id: str, change: Callable[[Session], str | None]) -> None:
        """Run one repair in its own transaction and file the job under what it did.

        A job that ends failed or cancelled takes the jobs waiting on it along (`cancel_dependents`).
        """
        try:
            with session_scope(self.sessions) as session:
                kind = change(session)
                if kind in ("failed", "cancelled", "synced"):
                    self.report.cancelled += dependencies.cancel_dependents_of_ended(
                        session=session, redis=self.redis, job_ids=[job_id]
                    )
        except Exception:
            log.exception("reconcile: repairing job %s failed; the next run tries again", job_id)
            self.report.errors.append(job_id)
            return
        if kind:
            getattr(self.report, kind).append(job_id)

    def _cascade(self, rows: Sequence[JobRow]) -> None:
        """Cancel waiting jobs whose dependency has failed or been cancelled, if that was missed."""
        waited_on = sorted(
            {
                job_id
                for row in rows
                if row.status == JobStatus.SCHEDULED.value
                for job_id in row.depends_on or ()
            }
        )
        if not waited_on:
            return
        try:
            with session_scope(self.sessions) as session:
                cancelled = dependencies.cancel_dependents_of_ended(
                    session=session, redis=self.redis, job_ids=waited_on
                )
        except Exception:
            log.exception("reconcile: cancelling the dependents of %d failed jobs failed", len(waited_on))
            return
        if cancelled:
            log.warning(
                "reconcile: %d job(s) still waited on a failed or cancelled job; cancelled", len(cancelled)
            )
            self.report.cancelled += cancelled


# -- the rows --------------------------------------------------------------------------------------


def _unfinished_rows(
    sessions: sessionmaker[Session],
    *,
    cutoff: datetime,
    batch_size: int,
    statuses: Sequence[JobStatus] = UNFINISHED,
) -> Iterator[list[JobRow]]:
    """Unfinished rows last touched before `cutoff`, `batch_size` at a time, detached from any session.

    Keyset over (created_at, id) within each (status, priority), so each batch is a range of the
    (status, priority, created_at) index and no batch reads rows it does not return.
    """
    for status in statuses:
        for priority in Priority:
            after: tuple[datetime, str] | None = None
            while True:
                query = select(JobRow).where(
                    JobRow.status == status.value,
                    JobRow.priority == priority.value,
                    JobRow.updated_at < cutoff,
                )
                if after is not None:
                    # A range the index scan starts from; the OR only sorts out one instant's rows.
                    query = query.where(
                        JobRow.created_at >= after[0], or_(JobRow.created_at > after[0], JobRow.id > after[1])
                    )
                with sessions() as session:
                    rows = list(
                        session.scalars(query.order_by(JobRow.created_at, JobRow.id).limit(batch_size))
                    )
                    session.expunge_all()
                if rows:
                    yield rows
                if len(rows) < batch_size:
                    break
                after = (rows[-1].created_at, rows[-1].id)


def _rows_started_in_rq(
    sessions: sessionmaker[Session], redis: Redis, queues: Sequence[str], *, cutoff: datetime, batch_size: int
) -> Iterator[list[JobRow]]:
    """Rows RQ has as running (in a queue's `rq:wip:` registry) that do not say `started` yet,
    last touched before `cutoff`, `batch_size` at a time, detached from any session.

    A simple worker hands its `started` write to its write-behind; a job that takes the process
    down with it a moment later leaves its row `queued`. The quick pass looks at these too, so such a
    job is retried within a sweep instead of at the next full run. They are as many as the jobs
    running, read from the registries, never from the rows.
    """
    registries = (queue_for(name, redis).started_job_registry for name in queues)
    ids = sorted({job_id for registry in registries for job_id in registry.get_job_ids(cleanup=False)})
    waiting = [status.value for status in UNFINISHED if status != JobStatus.STARTED]
    for start in range(0, len(ids), batch_size):
        with sessions() as session:
            rows = list(
                session.scalars(
                    select(JobRow).where(
                        JobRow.id.in_(ids[start : start + batch_size]),
                        JobRow.status.in_(waiting),
                        JobRow.updated_at < cutoff,
                    )
                )
            )
            session.expunge_all()
        if rows:
            yield rows


# -- the command -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend.reconcile",
        description="Compare SQL rows with RQ's queues and registries and repair both sides.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    redis = redis_for(settings)
    engine = engine_for(settings)
    try:
        report = reconcile(sessions=make_sessionmaker(engine), redis=redis, settings=settings)
    finally:
        engine.dispose()
        redis.close()
    print(json.dumps(report.as_dict(), indent=2) if args.json else describe(report))
    return 1 if report.errors else 0


def describe(report: ReconcileReport) -> str:
    """The report for people: the summary line, then the ids under each repair."""
    lines = [report.summary()]
    for name, meaning in (
        ("requeued", "lost, enqueued again"),
        ("retried", "worker died, next attempt queued"),
        ("failed", "worker died, no attempts left"),
        ("synced", "row brought up to RQ's record"),
        ("cancelled", "lost with a cancel outstanding"),
        ("errors", "repair failed, see the log"),
    ):
        ids = getattr(report, name)
        if ids:
            lines.append(f"  {name} ({meaning}): {' '.join(ids)}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
