"""Housekeeping on timers, in a thread of the scheduler daemon: the reconciler, its quick pass
over running jobs (dead workers' jobs retried within seconds), the prune, and the fold of the job
count changes into `job_counts` (every `backend.counts.FOLD_INTERVAL_S`; any scheduler may fold,
two folds at once fold disjoint changes).

They run beside the firing loop, never in it, so a long reconcile cannot make a firing late. Each
takes a Redis lock, so with several schedulers one of them does each run: the reconciler and its
quick pass share `lanes:reconcile:lock`, the prune takes `lanes:prune:lock`. Each runs once at
start, then every `LANES_RECONCILE_INTERVAL_S`, `LANES_DEAD_WORKER_SWEEP_S` and
`LANES_PRUNE_INTERVAL_S`. What they last did goes into the
scheduler's heartbeat hash, where `GET /api/v1/health` and `redis-cli` see it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, MutableMapping

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from backend import counts
from backend.config import Settings
from backend.prune import prune
from backend.reconcile import reconcile

log = logging.getLogger(__name__)

PRUNE_LOCK_KEY = "lanes:prune:lock"
PRUNE_LOCK_TTL_S = 600


class Housekeeping(threading.Thread):
    """Runs reconcile and prune on their intervals until `stopping` is set."""

    def __init__(
        self,
        *,
        redis: Redis,
        sessions: sessionmaker[Session],
        settings: Settings,
        stopping: threading.Event,
        status: MutableMapping[str, str],
    ) -> None:
        super().__init__(name="lanes-housekeeping", daemon=True)
        self.redis = redis
        self.sessions = sessions
        self.settings = settings
        self.stopping = stopping
        self.status = status

    def run(self) -> None:
        chores: list[tuple[Callable[[], str], float, str]] = [
            (self.reconcile, self.settings.reconcile_interval_s, "reconcile"),
            (self.sweep_dead_workers, self.settings.dead_worker_sweep_s, "dead_worker_sweep"),
            (self.prune, self.settings.prune_interval_s, "prune"),
            (self.fold_counts, counts.FOLD_INTERVAL_S, "count_fold"),
        ]
        due = {name: time.monotonic() for _, _, name in chores}
        while not self.stopping.is_set():
            for chore, interval_s, name in chores:
                if time.monotonic() >= due[name] and not self.stopping.is_set():
                    due[name] = time.monotonic() + interval_s
                    self._run(name, chore)
            self.stopping.wait(max(0.0, min(due.values()) - time.monotonic()))

    def _run(self, name: str, chore: Callable[[], str]) -> None:
        try:
            outcome = chore()
        except Exception as exc:  # a failed run is retried at its next interval
            log.exception("%s failed", name)
            outcome = f"error: {type(exc).__name__}: {exc}"
        self.status[f"last_{name}_at"] = str(time.time())
        self.status[f"last_{name}"] = outcome

    def reconcile(self) -> str:
        report = reconcile(sessions=self.sessions, redis=self.redis, settings=self.settings)
        if report.repaired or report.errors:
            log.info("reconcile: %s", report.summary())
        return report.summary()

    def sweep_dead_workers(self) -> str:
        """The reconciler over running jobs only: a dead worker's job is retried within seconds."""
        report = reconcile(
            sessions=self.sessions, redis=self.redis, settings=self.settings, only_running=True
        )
        if report.repaired or report.errors:
            log.info("dead worker sweep: %s", report.summary())
        return report.summary()

    def fold_counts(self) -> str:
        """Fold the job count changes the triggers appended (`backend.counts`), so reads stay quick."""
        with self.sessions() as session:
            waiting = counts.waiting(session)
            counts.fold(session)
        return f"folded about {waiting} job count changes"

    def prune(self) -> str:
        lock = self.redis.lock(PRUNE_LOCK_KEY, timeout=PRUNE_LOCK_TTL_S, blocking=False)
        if not lock.acquire():
            return "another scheduler is pruning"
        try:
            with self.sessions() as session:
                deleted = prune(session=session, older_than_days=self.settings.retention_days)
        finally:
            lock.release()
        return f"deleted {deleted} finished rows older than {self.settings.retention_days} days"
