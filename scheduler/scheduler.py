"""`LanesScheduler`: rq-scheduler's loop, firing Lanes schedules as new jobs with rows of their own.

rq-scheduler keeps entries in `rq:scheduler:scheduled_jobs`; each pass, under its lock
`rq:scheduler_lock`, it moves the due ones onto their queues. Lanes keeps that loop and that lock
and changes what a due entry does: an entry `schedule-<id>` fires its schedule through
`backend.firing.fire_due` (a new job per firing, its id derived from the schedule and due time, its
row with `schedule_id`), and the entry moves on to the schedule's next time in its own time zone.
Entries Lanes did not write go through rq-scheduler's own `enqueue_job`, as before.

Every `LANES_SCHEDULER_SYNC_S`, inside a pass (so under the lock) and after its firings, the
entries are made to match the schedules table (`backend.schedule_entries.sync_entries`). A pass
with many firings works in chunks and renews the lock and its heartbeat after each one.

A pass sleeps until the next interval, or until the earliest entry is due if that comes sooner,
so a firing reaches its queue within a few milliseconds of its due second. The first SIGTERM or
SIGINT ends the loop after the pass under way; a second one exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq_scheduler import Scheduler
from rq_scheduler.utils import to_unix
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.db import utcnow
from backend.firing import FireReport, fire_due
from backend.health import SCHEDULERS_KEY
from backend.queues import LanesJob
from backend.schedule_entries import ENTRIES_KEY, SyncReport, schedule_id_of, sync_entries
from backend.tasks import TaskRegistry

log = logging.getLogger(__name__)

#: After Redis or the database refuses, the loop waits this long, doubling up to the cap.
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 10.0


@dataclass
class PassReport:
    """One pass of the loop: whether it held the lock, what it fired and what its sync changed."""

    locked: bool
    fired: FireReport | None = None
    synced: SyncReport | None = None
    others: int = 0


def default_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


class LanesScheduler(Scheduler):
    """rq-scheduler's `Scheduler` with the project's JSON job class, firing Lanes schedules."""

    job_class = LanesJob

    def __init__(
        self,
        *,
        redis: Redis,
        sessions: sessionmaker[Session],
        settings: Settings,
        tasks: TaskRegistry,
        name: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(
            connection=redis,
            interval=settings.scheduler_interval_s,
            job_class=LanesJob,
            name=name or default_name(),
        )
        self.sessions = sessions
        self.settings = settings
        self.tasks = tasks
        self.clock = clock
        self.stopping = threading.Event()
        self.last_sync = float("-inf")
        self.extra_heartbeat: dict[str, str] = {}

    # -- one pass ----------------------------------------------------------------------------------

    def run_pass(self) -> PassReport:
        """Take rq-scheduler's lock, sync when it is time, fire what is due, release the lock."""
        if not self.acquire_lock():
            return PassReport(locked=False)
        try:
            report = PassReport(locked=True)
            # Fire first: a sync of many schedules must not make a due firing late. An entry the
            # sync restores fires in the next pass, an interval later at most.
            report.fired, report.others = self.enqueue_jobs()
            if time.monotonic() - self.last_sync >= self.settings.scheduler_sync_s:
                report.synced = self.sync()
            return report
        finally:
            self.remove_lock()

    def sync(self) -> SyncReport:
        with self.sessions() as session:
            report = sync_entries(session=session, redis=self.connection, now=self.clock())
        self.last_sync = time.monotonic()
        self.extra_heartbeat["last_sync_at"] = str(time.time())
        return report

    def enqueue_jobs(self) -> tuple[FireReport, int]:
        """Fire the due Lanes entries; hand the others to rq-scheduler's own `enqueue_job`."""
        now = self.clock()
        due = [_text(member) for member in self.connection.zrangebyscore(ENTRIES_KEY, 0, to_unix(now))]
        ours = [sid for member in due if (sid := schedule_id_of(member)) is not None]
        others = [member for member in due if schedule_id_of(member) is None]
        report = FireReport()
        if ours:
            with self.sessions() as session:
                report = fire_due(
                    session=session,
                    redis=self.connection,
                    settings=self.settings,
                    tasks=self.tasks,
                    schedule_ids=ours,
                    now=now,
                    between_chunks=self._keep_alive,
                )
        for member in others:
            try:
                job = self.job_class.fetch(member, connection=self.connection)
            except NoSuchJobError:
                self.cancel(member)
                continue
            self.enqueue_job(job)
        return report, len(others)

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, burst: bool = False) -> None:
        """Pass after pass until stopped (or, with `burst`, one pass that held the lock)."""
        self._install_signal_handlers()
        backoff = BACKOFF_FIRST_S
        while not self._registered():
            if burst or self.stopping.wait(backoff):
                raise SystemExit(f"scheduler {self.name}: Redis does not answer at start")
            backoff = min(BACKOFF_CAP_S, backoff * 2)
        backoff = BACKOFF_FIRST_S
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    self.heartbeat()
                    report = self.run_pass()
                    backoff = BACKOFF_FIRST_S
                except Exception as exc:  # a bad pass must not end the daemon: log, back off, go on
                    if isinstance(exc, RedisError | SQLAlchemyError | OSError):
                        log.warning(
                            "scheduler pass failed (%s: %s); again in %.1f s",
                            type(exc).__name__,
                            exc,
                            backoff,
                        )
                    else:
                        log.exception("scheduler pass failed; again in %.1f s", backoff)
                    if burst:
                        raise
                    self.stopping.wait(backoff)
                    backoff = min(BACKOFF_CAP_S, backoff * 2)
                    continue
                if burst and report.locked:
                    break
                self.stopping.wait(self._pause(time.monotonic() - started))
        finally:
            self._release()

    def _registered(self) -> bool:
        try:
            self.register_birth()
            return True
        except RedisError as exc:
            log.warning("scheduler %s: Redis does not answer (%s); trying again", self.name, exc)
            return False

    def _pause(self, elapsed_s: float) -> float:
        """Until the next pass: the rest of the interval, or less if an entry is due sooner."""
        pause = max(0.0, self._interval - elapsed_s)
        try:
            earliest = self.connection.zrange(ENTRIES_KEY, 0, 0, withscores=True)
        except RedisError:
            return pause
        if earliest:
            until_due = float(earliest[0][1]) - time.time()
            if 0 < until_due < pause:
                pause = until_due
        return pause

    def _keep_alive(self) -> None:
        """During a long pass: keep the lock and the registration from expiring under it."""
        self.connection.expire(self.scheduler_lock_key, int(self._interval) + 10)
        self.heartbeat()

    def heartbeat(self) -> None:
        """rq-scheduler's heartbeat (the key's expiry) plus what `GET /api/v1/health` shows."""
        fields: dict[str, Any] = {
            "heartbeat": str(time.time()),
            "hostname": socket.gethostname(),
            "pid": str(os.getpid()),
            **self.extra_heartbeat,
        }
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping=fields)
            pipe.expire(self.key, int(self._interval) + 10)
            pipe.sadd(SCHEDULERS_KEY, self.key)  # where health finds it without a SCAN
            pipe.execute()

    def _install_signal_handlers(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            if self.stopping.is_set():
                log.warning("second %s: scheduler exits now", signal.Signals(signum).name)
                raise SystemExit(1)
            log.info("%s: scheduler stops after this pass", signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def _release(self) -> None:
        try:
            self.remove_lock()
            self.register_death()
        except RedisError as exc:
            log.warning("scheduler %s: could not register its exit (%s)", self.name, exc)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
