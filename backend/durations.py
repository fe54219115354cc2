"""Moving averages of how long jobs run, from the SQL mirror, cached for a few seconds.

A run time is `finished_at - started_at` of a `succeeded` row: the task's own work, as the worker
saw it. Each average covers the last `SAMPLE_SIZE` such rows of a task (newest created first, on
the `(task, created_at)` index), of a queue, or of every task (newest finished first, on the
`(status, finished_at, …)` index), so its cost is bounded however long the history.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, func, select, union_all
from sqlalchemy.orm import Session

from backend.db import seconds_between
from backend.enums import JobStatus
from backend.models import JobRow

SAMPLE_SIZE = 50  # succeeded rows per moving average
STATS_TTL_S = 5.0  # how long an average is reused before it is queried again
STATS_MAX_ENTRIES = 1024  # the cache is cleared when it grows past this
HANDOVER_SAMPLE_SIZE = 200  # recent succeeded rows whose gaps measure the hand-over
HANDOVER_MAX_S = 1.0  # a longer gap between two jobs on a worker is idle time, not hand-over


@dataclass(frozen=True)
class Mean:
    """The mean run time of recent succeeded jobs; `mean_s` is None with no samples."""

    mean_s: float | None
    samples: int


class DurationStats:
    """Moving averages of run times (finished_at - started_at), each reused for `ttl_s`.

    Keyed by database, so one process may serve several. An average with no samples is not kept, so
    the first successes of a new task count at once. Thread-safe enough: a race costs a duplicate
    query, never a wrong answer.
    """

    def __init__(
        self,
        *,
        ttl_s: float = STATS_TTL_S,
        sample_size: int = SAMPLE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ttl_s = ttl_s
        self.sample_size = sample_size
        self.clock = clock
        self._cache: dict[tuple[str, str, str], tuple[float, Mean]] = {}
        self._lock = threading.Lock()

    def task_mean(self, session: Session, task: str) -> Mean:
        """The task's last `sample_size` succeeded rows, newest created first (from the index
        `(task, status, created_at, id, started_at, finished_at)` alone)."""
        return self.task_means(session, [task])[task]

    def task_means(self, session: Session, tasks: Iterable[str]) -> dict[str, Mean]:
        """`task_mean` of each of `tasks`; those not in the cache are read in one statement (a
        `UNION ALL` of each task's newest `sample_size`, each on the index), not one each."""
        return self._many(session, "task", tasks)

    def queue_mean(self, session: Session, queue: str) -> Mean:
        """The queue's last `sample_size` succeeded rows, newest finished first."""
        return self.queue_means(session, [queue])[queue]

    def queue_means(self, session: Session, queues: Iterable[str]) -> dict[str, Mean]:
        """`queue_mean` of each of `queues`, the ones not in the cache read in one statement."""
        return self._many(session, "queue", queues)

    def _many(self, session: Session, kind: str, names: Iterable[str]) -> dict[str, Mean]:
        found: dict[str, Mean] = {}
        missing: list[str] = []
        for name in sorted(set(names)):
            hit = self._hit(session, kind, name)
            if hit is None:
                missing.append(name)
            else:
                found[name] = hit
        if not missing:
            return found
        dialect = session.get_bind().dialect.name
        statement = _averages(dialect, kind, len(missing), self.sample_size)
        # SQLite's date functions count whole milliseconds, and their doubles carry noise below.
        digits = 3 if dialect == "sqlite" else 6
        averages = {
            name: (float(mean_s), int(samples))
            for name, mean_s, samples in session.execute(
                statement, {f"name{i}": name for i, name in enumerate(missing)}
            )
        }
        for name in missing:
            mean_s, samples = averages.get(name, (0.0, 0))
            mean = Mean(round(max(0.0, mean_s), digits) if samples else None, samples)
            found[name] = self._keep(session, kind, name, mean)
        return found

    def overall_mean(self, session: Session) -> Mean:
        """The last `sample_size` succeeded rows of any task (index status, finished_at)."""
        query = _succeeded().order_by(JobRow.finished_at.desc())
        return self._cached(session, "all", "", lambda: self._mean(session, query))

    def handover(self, session: Session) -> Mean:
        """How long a busy worker takes from ending one job to starting the next (result saved,
        rows written, next job popped, work-horse forked): the median gap between consecutive jobs
        on one worker among the last `HANDOVER_SAMPLE_SIZE` succeeded rows, gaps longer than
        `HANDOVER_MAX_S` left out as idle time. A run time alone leaves this out, and for jobs of a
        few milliseconds it is most of what each one costs.

        Kept for `ttl_s` even with no samples: no gaps is the steady state of workers that idle
        between jobs, not a history yet to come, and the query reads its 200 rows at every call."""
        return self._cached(session, "handover", "", lambda: _handover(session), keep_empty=True)

    def _mean(self, session: Session, query: Any) -> Mean:
        spans = [
            (finished - started).total_seconds()
            for started, finished in session.execute(query.limit(self.sample_size))
        ]
        return Mean(max(0.0, sum(spans) / len(spans)) if spans else None, len(spans))

    def _cached(
        self, session: Session, kind: str, name: str, compute: Callable[[], Mean], *, keep_empty: bool = False
    ) -> Mean:
        hit = self._hit(session, kind, name)
        return hit if hit is not None else self._keep(session, kind, name, compute(), keep_empty=keep_empty)

    def _hit(self, session: Session, kind: str, name: str) -> Mean | None:
        """The cached average, if it is younger than `ttl_s`."""
        with self._lock:
            hit = self._cache.get((str(session.get_bind().engine.url), kind, name))
        return hit[1] if hit is not None and self.clock() - hit[0] < self.ttl_s else None

    def _keep(self, session: Session, kind: str, name: str, mean: Mean, *, keep_empty: bool = False) -> Mean:
        if not mean.samples and not keep_empty:  # no history yet: ask again next time rather than for `ttl_s`
            return mean
        with self._lock:
            if len(self._cache) >= STATS_MAX_ENTRIES:
                self._cache.clear()
            self._cache[(str(session.get_bind().engine.url), kind, name)] = (self.clock(), mean)
        return mean


def _handover(session: Session) -> Mean:
    query = _succeeded(worker=True).order_by(JobRow.finished_at.desc()).limit(HANDOVER_SAMPLE_SIZE)
    by_worker: dict[str, list[tuple[datetime, datetime]]] = {}
    for worker, started, finished in session.execute(query):
        if worker:
            by_worker.setdefault(worker, []).append((started, finished))
    gaps = []
    for runs in by_worker.values():
        runs.sort()
        for (_, ended), (started, _) in itertools.pairwise(runs):
            gap_s = (started - ended).total_seconds()
            if 0 <= gap_s <= HANDOVER_MAX_S:
                gaps.append(gap_s)
    return Mean(statistics.median(gaps) if gaps else None, len(gaps))


@functools.lru_cache(maxsize=64)
def _averages(dialect: str, kind: str, names: int, sample_size: int) -> Any:
    """(name, mean run time, samples) of `names` tasks or queues (bound as `name0`, `name1` …):
    each one's newest `sample_size` runs (an index walk each, the task's or the queue's), averaged
    by the database. The spans come back as one number a name, not two timestamps a row to parse
    (12 tasks × 50 runs: 8 ms in Python at 1,000,000 rows), and the statement is built once per
    number of names (building a 12-part union cost more than running it)."""
    column, newest = (
        (JobRow.task, JobRow.created_at) if kind == "task" else (JobRow.queue, JobRow.finished_at)
    )
    run_s = seconds_between(dialect, JobRow.finished_at, JobRow.started_at)
    parts = [
        select(bindparam(f"name{i}", type_=String).label("name"), run_s.label("run_s"))
        .where(*_SUCCEEDED, column == bindparam(f"name{i}", type_=String))
        .order_by(newest.desc())
        .limit(sample_size)
        .subquery()
        for i in range(names)
    ]
    runs = union_all(*[select(part.c.name, part.c.run_s) for part in parts]).subquery()
    return select(runs.c.name, func.avg(runs.c.run_s), func.count()).group_by(runs.c.name)


#: A succeeded row with both ends of its run.
_SUCCEEDED = (
    JobRow.status == JobStatus.SUCCEEDED.value,
    JobRow.started_at.is_not(None),
    JobRow.finished_at.is_not(None),
)


def _succeeded(*, worker: bool = False) -> Any:
    """(started_at, finished_at) of succeeded rows, after the `worker` when asked."""
    columns = (JobRow.worker,) if worker else ()
    return select(*columns, JobRow.started_at, JobRow.finished_at).where(*_SUCCEEDED)


#: The process's averages, used when a caller passes none.
default_stats = DurationStats()
