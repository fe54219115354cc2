"""Mirror writes off the job's critical path: a thread that commits them several to a transaction.

A worker that runs jobs in its own process (`LANES_WORKER_MODE=simple`) hands each SQL mirror
write and each metrics update to a `WriteBehind` and goes on with the next job. Its thread takes
everything handed over since its last commit, after letting the first of them wait at most 5 ms
for company, and applies it in one transaction: under load a commit carries many jobs' writes,
idle it carries one, 5 ms after it was handed over (group commit). Metrics are added up in
memory and sent once a second, in one Redis pipeline with one command per counter, however many
jobs they count.

A job's steps (`backend.mirror.Move`) come as data, not code, so that consecutive steps of one
shape (every `started`, every `succeeded`) are applied with one `executemany`.

Nothing is lost that matters: a batch that fails is retried one write at a time, and a write that
still fails is noted in `lanes:mirror:pending` for replay from RQ's record, as a direct write's
would be. A worker killed outright loses at most the writes of its last moments; RQ holds the
truth of those jobs and the reconciler brings their rows up to it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from backend import metrics
from backend.db import session_scope
from backend.mirror import Move, advance_all
from backend.queues import MIRROR_PENDING_KEY

log = logging.getLogger(__name__)

MAX_BATCH = 500  # writes in one transaction at most
CLOSE_TIMEOUT_S = 30.0
METRICS_EVERY_S = 1.0  # how often the added-up metrics are sent
GATHER_S = 0.005  # how long the first write of a batch waits for others
GATHER = 32  # ... unless this many are waiting already

Change = Callable[[Session], Any]
#: (name, labels, amount) counters and (name, labels, seconds) observations, as `metrics.record` takes.
Counter = tuple[str, dict[str, str], int]
Observation = tuple[str, dict[str, str], float]


@dataclass(frozen=True)
class Write:
    job_id: str
    change: Change | Move  # a Move is batched with its neighbours of the same shape
    replay: bool  # note a failure in lanes:mirror:pending for replay from RQ

    def apply(self, session: Session) -> None:
        if isinstance(self.change, Move):
            self.change.apply(session)
        else:
            self.change(session)


class WriteBehind:
    """Applies handed-over mirror writes on a thread of its own, in order, batched."""

    def __init__(self, *, sessions: sessionmaker[Session], redis: Redis, max_batch: int = MAX_BATCH):
        self.sessions = sessions
        self.redis = redis
        self.max_batch = max_batch
        self.failures = 0
        self.batches = 0
        self.batches_split = 0  # batches that failed whole and were applied one write at a time
        self.writes = 0
        self._writes: list[Write] = []
        self._tally = metrics.Tally()
        self._metrics_sent = time.monotonic()
        self._handed = 0  # writes handed over so far
        self._done = 0  # of those, how many are applied
        self._after: list[tuple[int, Callable[[], None]]] = []  # (writes to apply first, callback)
        self._closed = False
        self._lock = threading.Condition()
        #: Held while a batch is applied: a fork must not copy a SQL connection mid-transaction.
        self._applying = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lanes-write-behind", daemon=True)
        self._thread.start()

    # -- the worker's side -----------------------------------------------------------------------

    def write(self, job_id: str, change: Change | Move, *, replay: bool = True) -> None:
        """Hand over one SQL change; it is applied in order with every other, soon."""
        with self._lock:
            self._writes.append(Write(job_id, change, replay))
            self._handed += 1
            self._lock.notify_all()

    def record(self, counters: list[Counter], times: list[Observation] | None = None) -> None:
        """Hand over counts and observations for the shared metrics hash (sent within a second)."""
        with self._lock:
            for name, labels, amount in counters:
                self._tally.count(name, labels, amount)
            for name, labels, seconds in times or []:
                self._tally.observe(name, labels, seconds)

    def after(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the thread, or here if nothing is pending) once every write handed
        over so far is applied or has failed. It must be quick, and it must not raise."""
        with self._lock:
            if self._done < self._handed and self._thread.is_alive():
                self._after.append((self._handed, callback))
                return
        callback()

    def flush(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until everything handed over so far is applied; False if `timeout_s` passed first."""
        with self._lock:
            target = self._handed
            return self._lock.wait_for(lambda: self._done >= target or not self._thread.is_alive(), timeout_s)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Apply what is left and stop the thread (a worker calls this as it exits)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("write-behind: %d mirror writes not applied at exit", self._handed - self._done)

    @contextmanager
    def between_batches(self) -> Iterator[None]:
        """Hold the thread between two batches (a forking worker forks its horse in here).

        SQLite forbids carrying a connection with an open transaction across `fork()`: the child's
        copy, closed when it is collected, would undo what the parent's transaction holds.
        """
        with self._applying:
            yield

    @property
    def pending(self) -> int:
        with self._lock:
            return self._handed - self._done

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(
                    lambda: self._writes or self._closed or self._metrics_due(), timeout=METRICS_EVERY_S
                )
                # A write waits a moment for company: one commit then carries several jobs' steps.
                self._lock.wait_for(lambda: len(self._writes) >= GATHER or self._closed, timeout=GATHER_S)
                writes, self._writes = self._writes[: self.max_batch], self._writes[self.max_batch :]
                tally = None
                if self._tally and (self._closed or self._metrics_due()):
                    tally, self._tally = self._tally, metrics.Tally()
                    self._metrics_sent = time.monotonic()
                last = self._closed and not self._writes
            try:
                with self._applying:
                    self._apply(writes)
                if tally is not None:
                    tally.send(self.redis)
            except Exception:  # never let the thread die: the worker would stop mirroring
                log.exception("write-behind: a batch of %d writes failed unexpectedly", len(writes))
            with self._lock:
                self._done += len(writes)
                self._lock.notify_all()
                due = [callback for target, callback in self._after if target <= self._done]
                self._after = [(target, callback) for target, callback in self._after if target > self._done]
            for callback in due:
                try:
                    callback()
                except Exception:
                    log.exception("write-behind: a callback after a batch failed")
            if last:
                return

    def _metrics_due(self) -> bool:
        return bool(self._tally) and time.monotonic() - self._metrics_sent >= METRICS_EVERY_S

    def _apply(self, writes: list[Write]) -> None:
        if not writes:
            return
        self.batches += 1
        self.writes += len(writes)
        try:
            with session_scope(self.sessions) as session:
                for is_move, grouped in itertools.groupby(writes, key=lambda w: isinstance(w.change, Move)):
                    group = list(grouped)
                    if is_move:  # consecutive moves of one shape share one executemany
                        advance_all(session, [cast(Move, write.change) for write in group])
                    else:
                        for write in group:
                            write.apply(session)
            return
        except Exception:
            if len(writes) == 1:
                self._failed(writes[0])
                return
            self.batches_split += 1
            log.warning("write-behind: a batch of %d writes failed; applying them one by one", len(writes))
        for write in writes:
            try:
                with session_scope(self.sessions) as session:
                    write.apply(session)
            except Exception:
                self._failed(write)

    def _failed(self, write: Write) -> None:
        self.failures += 1
        metrics.count(self.redis, "lanes_mirror_write_failures")
        log.exception("job %s: SQL mirror write failed; it will be replayed from RQ", write.job_id)
        if write.replay:
            try:
                self.redis.sadd(MIRROR_PENDING_KEY, write.job_id)
            except Exception:
                log.exception("job %s: could not note the failed mirror write in Redis either", write.job_id)
