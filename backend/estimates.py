"""When will a waiting job start and finish? Position, jobs ahead, and a time estimate.

The model (see `docs/estimates.md` for its assumptions and its measured accuracy):

- A job's *position* is 1-based: the jobs ahead of it in its own queue, plus one (`LPOS`).
- *Ahead* adds every job waiting in a higher queue that the serving workers drain first (`LLEN`):
  workers take `high`, then `normal`, then `low`, strictly.
- The *workers* are the live ones that serve the job's queue (`backend.workload`). Each is free
  now, or when its current job should end: that job's task's mean minus the time it has run.
- *Durations* are moving averages over recent succeeded rows (`backend.durations`): of the job's
  own task for its run, and of each queue for the jobs ahead of it there (so the jobs ahead are
  never listed). Missing history falls back to the queue's mean, then to the mean over all tasks.
  Each job also costs the workers' *hand-over*, the gap between one job's end and the next start.
- The jobs ahead are given, in order, to whichever worker is free first; the job starts when a
  worker is free after them. Beyond `SIMULATE_MAX_JOBS` jobs ahead, the rest of the work is
  spread evenly over the workers instead of being played out job by job.

With no live worker, or no duration history at all, there is no start time (`None`), and `basis`
says why. Redis errors do not escape: an estimate is a decoration, so the answer is then "none".
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.durations import DurationStats, Mean, default_stats
from backend.enums import QUEUE_ORDER, JobStatus
from backend.models import JobRow
from backend.workload import LiveWorker, Workload, read_workload

log = logging.getLogger(__name__)


def may_wait_in_queue(row: Any, now: datetime) -> bool:
    """Whether `row`'s job may be on its queue now: queued, or retrying with its wait over.

    A job still waiting out its back-off is in RQ's scheduled registry, and asking where it stands
    in its queue would cost Redis a scan of the whole list to find nothing."""
    if row.status == JobStatus.QUEUED:
        return True
    return row.status == JobStatus.RETRYING and (row.next_retry_at is None or row.next_retry_at <= now)


SIMULATE_MAX_JOBS = 2_000  # jobs ahead played out one by one; the rest are spread evenly


class JobRef(Protocol):
    """What an estimate needs to know about a job (a `JobRow` will do)."""

    @property
    def id(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def task(self) -> str: ...


@dataclass(frozen=True)
class Estimate:
    """Where a waiting job stands and when it should run. Times are aware UTC, or None if unknown."""

    position: int  # 1-based place in its own queue
    ahead: int  # jobs that will start before it: its queue's and the higher queues'
    estimated_start_at: datetime | None
    estimated_finish_at: datetime | None
    basis: dict[str, Any]  # workers, means and sample sizes used; `notes` when something is missing

    def fields(self) -> dict[str, Any]:
        """The estimate as the API's job fields."""
        return {
            "position": self.position,
            "ahead": self.ahead,
            "estimated_start_at": self.estimated_start_at,
            "estimated_finish_at": self.estimated_finish_at,
            "estimate_basis": self.basis,
        }


#: The job fields of a job that is not waiting in a queue.
NO_ESTIMATE_FIELDS: dict[str, Any] = dict.fromkeys(
    ("position", "ahead", "estimated_start_at", "estimated_finish_at", "estimate_basis")
)


# -- the estimate ------------------------------------------------------------------------------


def estimate(
    *,
    session: Session,
    redis: Redis,
    job_id: str,
    queue: str,
    task: str,
    now: datetime | None = None,
    stats: DurationStats | None = None,
) -> Estimate | None:
    """Position and estimated times of one job; None when it is not waiting in `queue`."""
    found = estimates_for_many(
        session=session, redis=redis, jobs=[_Ref(job_id, queue, task)], now=now, stats=stats
    )
    return found.get(job_id)


def estimates_for_many(
    *,
    session: Session,
    redis: Redis,
    jobs: Iterable[JobRef],
    now: datetime | None = None,
    stats: DurationStats | None = None,
) -> dict[str, Estimate]:
    """Estimates of the jobs that wait in their queues, by job id; the others are left out.

    Costs two or three Redis round trips (`backend.workload`), one SQL query for the running jobs,
    and one per task or queue whose average is not cached. Pass only rows that
    `may_wait_in_queue`: each one not in its queue costs a scan of the whole list.
    """
    jobs = [job for job in jobs if job.queue]
    if not jobs:
        return {}
    now = now or utcnow()
    stats = stats or default_stats
    try:
        workload = read_workload(redis, [(job.id, job.queue) for job in jobs])
    except RedisError as exc:
        log.warning("no estimates: Redis error %s", exc)
        return {}
    planner = _Planner(session=session, stats=stats, workload=workload)
    # The averages this call needs, read together: the waiting jobs' tasks, and the queues.
    in_queues = [job for job, index in zip(jobs, workload.indexes, strict=True) if index is not None]
    if in_queues:
        planner.learn({job.task for job in in_queues}, [q.value for q in QUEUE_ORDER])

    waiting: dict[str, list[tuple[JobRef, int]]] = {}
    for job, index in zip(jobs, workload.indexes, strict=True):
        if index is not None:
            waiting.setdefault(job.queue, []).append((job, index))
    out: dict[str, Estimate] = {}
    for queue, members in waiting.items():
        for job, index, plan in planner.plan(queue, members, now=now):
            start = now + timedelta(seconds=plan.start_s) if math.isfinite(plan.start_s) else None
            finish = start + timedelta(seconds=plan.run_s) if start and math.isfinite(plan.run_s) else None
            out[job.id] = Estimate(
                position=index + 1,
                ahead=plan.ahead,
                estimated_start_at=start,
                estimated_finish_at=finish,
                basis=plan.basis,
            )
    return out


@dataclass(frozen=True)
class _Ref:
    id: str
    queue: str
    task: str


@dataclass(frozen=True)
class _Plan:
    ahead: int
    start_s: float  # seconds from now; inf when unknown
    run_s: float  # the job's own expected run time; inf when unknown
    basis: dict[str, Any]


@dataclass(frozen=True)
class _Running:
    task: str
    queue: str
    started_at: datetime | None


class _Planner:
    """Turns a reading of Redis and the moving averages into plans, one queue at a time."""

    def __init__(self, *, session: Session, stats: DurationStats, workload: Workload):
        self.session = session
        self.stats = stats
        self.workload = workload
        self._running: dict[str, _Running] | None = None
        self._means: dict[tuple[str, str], Mean] = {}  # this call's, even those `stats` does not keep

    def learn(self, tasks: Iterable[str], queues: Iterable[str]) -> None:
        """Read the averages of `tasks` and of `queues` (`DurationStats.task_means`,
        `queue_means`) for this call, a statement each rather than one a task or queue."""
        for kind, means in (
            ("task", self.stats.task_means(self.session, tasks)),
            ("queue", self.stats.queue_means(self.session, queues)),
        ):
            self._means.update({(kind, name): mean for name, mean in means.items()})

    def _memo(self, key: tuple[str, str], fetch: Callable[[], Mean]) -> Mean:
        """An average asked for once per call (`stats` keeps an empty task or queue average only
        for the call)."""
        if key not in self._means:
            self._means[key] = fetch()
        return self._means[key]

    def plan(
        self, queue: str, members: Sequence[tuple[JobRef, int]], *, now: datetime
    ) -> list[tuple[JobRef, int, _Plan]]:
        """Plans of the jobs `members` (with their LPOS) waiting in `queue`: one simulation for all."""
        notes: list[str] = []
        serving = [w for w in self.workload.workers if queue in w.queues]
        higher = [(q, self.workload.depths.get(q, 0)) for q in self._higher_queues(queue, serving)]
        higher = [(q, count) for q, count in higher if count]
        in_higher = sum(count for _, count in higher)
        deepest = max(index for _, index in members)
        means = {q: self._queue_mean(q, notes) for q, _ in [*higher, (queue, deepest)]}

        handover_s = self._memo(("handover", ""), lambda: self.stats.handover(self.session)).mean_s or 0.0
        if serving:
            # A worker ending a job starts the next one a hand-over later.
            free_s = [self._free_in_s(w, now, notes) + (handover_s if w.running else 0) for w in serving]
            runs = [(n, _or_inf(means[q].mean_s) + handover_s) for q, n in [*higher, (queue, deepest)]]
            starts = start_offsets(free_s, runs, [in_higher + index for _, index in members])
        else:
            notes.append(f"no live worker serves queue {queue!r}: its jobs wait until one starts")
        busy = sum(1 for w in serving if w.running)

        plans = []
        for job, index in members:
            job_notes = list(notes)
            task = self._task_mean(job.task, queue, job_notes)
            ahead_by_queue = dict(higher) | ({queue: index} if index else {})
            start_s = starts[in_higher + index] if serving else math.inf
            if serving and not math.isfinite(start_s):
                job_notes.append("no succeeded jobs yet to learn durations from")
            basis: dict[str, Any] = {
                "workers": len(serving),
                "busy": busy,
                "handover_s": round(handover_s, 3),
                "ahead_by_queue": ahead_by_queue,
                "mean_s": {"task": _round(task.mean_s)}
                | {q: _round(means[q].mean_s) for q in ahead_by_queue},
                "samples": {"task": task.samples} | {q: means[q].samples for q in ahead_by_queue},
            }
            if job_notes:
                basis["notes"] = sorted(set(job_notes))
            plan = _Plan(ahead=in_higher + index, start_s=start_s, run_s=_or_inf(task.mean_s), basis=basis)
            plans.append((job, index, plan))
        return plans

    def _higher_queues(self, queue: str, serving: list[LiveWorker]) -> list[str]:
        """Queues above `queue` that its workers drain first (all of them when no worker runs)."""
        order = [q.value for q in QUEUE_ORDER]
        if queue not in order:
            return []
        above = order[: order.index(queue)]
        if not serving:
            return above
        served = {q for w in serving for q in w.queues}
        return [q for q in above if q in served]

    def _task_mean(self, task: str, queue: str, notes: list[str]) -> Mean:
        mean = self._memo(("task", task), lambda: self.stats.task_mean(self.session, task))
        if mean.mean_s is not None:
            return mean
        fallback = self._queue_mean(queue, notes)
        if fallback.mean_s is not None:
            notes.append(f"no history for task {task!r}: the queue's mean stands in")
        return Mean(fallback.mean_s, 0)

    def _queue_mean(self, queue: str, notes: list[str]) -> Mean:
        mean = self._memo(("queue", queue), lambda: self.stats.queue_mean(self.session, queue))
        if mean.mean_s is not None:
            return mean
        overall = self._overall()
        if overall.mean_s is not None:
            notes.append(f"no history in queue {queue!r}: the mean over all tasks stands in")
        return Mean(overall.mean_s, 0)

    def _overall(self) -> Mean:
        return self._memo(("all", ""), lambda: self.stats.overall_mean(self.session))

    def _free_in_s(self, worker: LiveWorker, now: datetime, notes: list[str]) -> float:
        """Seconds until `worker` is free: 0 when idle; else its job's mean less the time it has run."""
        rows = self._running_rows()
        longest = 0.0
        for execution in worker.running:
            row = rows.get(execution.job_id)
            # A job with no row (yet): any job's mean.
            mean = self._task_mean(row.task, row.queue, notes) if row else self._overall()
            if mean.mean_s is None:
                return math.inf
            started_at = execution.started_at or (row.started_at if row else None)
            # An unknown start: half-way through, on average.
            elapsed_s = (now - started_at).total_seconds() if started_at else mean.mean_s / 2
            longest = max(longest, mean.mean_s - elapsed_s)
        return longest

    def _running_rows(self) -> dict[str, _Running]:
        if self._running is None:
            ids = sorted({e.job_id for w in self.workload.workers for e in w.running})
            columns = (JobRow.id, JobRow.task, JobRow.queue, JobRow.started_at)
            rows = self.session.execute(select(*columns).where(JobRow.id.in_(ids))).all() if ids else []
            self._running = {row.id: _Running(row.task, row.queue, row.started_at) for row in rows}
        return self._running


def start_offsets(
    free_s: Sequence[float], runs: Sequence[tuple[int, float]], targets: Iterable[int]
) -> dict[int, float]:
    """Seconds until the job with `n` jobs ahead of it starts, for each `n` in `targets`.

    `free_s`: when each worker is next free (0 = now). `runs`: the jobs ahead in the order workers
    take them, as (count, mean duration) runs. Each job goes to the worker free first; the answer is
    when a worker is free after the first `n`. Past `SIMULATE_MAX_JOBS` jobs the rest of the work is
    spread evenly over the workers, whose free times are then staggered by one job's length.
    Unknown durations are `inf`, and so is any answer that depends on them.
    """
    heap = list(free_s)
    heapq.heapify(heap)
    done = 0
    out: dict[int, float] = {}
    for n in sorted(set(targets)):
        while done < min(n, SIMULATE_MAX_JOBS):
            duration, left_in_run = _run_at(runs, done)
            rounds = min(left_in_run, min(n, SIMULATE_MAX_JOBS) - done) // len(heap)
            if rounds and max(heap) - heap[0] <= duration:
                # Every worker is free within one job of the first: the next len(heap) jobs go one
                # to each, and after them that is still so. Whole rounds at once, same result.
                heap = [t + rounds * duration for t in heap]
                heapq.heapify(heap)
                done += rounds * len(heap)
                continue
            heapq.heapreplace(heap, heap[0] + duration)
            done += 1
        if done == n:
            out[n] = heap[0]
            continue
        last = _duration_of(runs, n - 1)
        level = (sum(heap) + _work(runs, done, n)) / len(heap)
        staggered = level - last * (len(heap) - 1) / (2 * len(heap))
        out[n] = max(heap[0], staggered) if math.isfinite(staggered) else math.inf
    return out


def _run_at(runs: Sequence[tuple[int, float]], k: int) -> tuple[float, int]:
    """The duration of job k ahead, and how many jobs of its run are left from it on."""
    for count, mean_s in runs:
        if k < count:
            return mean_s, count - k
        k -= count
    raise IndexError("fewer jobs ahead than asked for")


def _duration_of(runs: Sequence[tuple[int, float]], k: int) -> float:
    for count, mean_s in runs:
        if k < count:
            return mean_s
        k -= count
    raise IndexError("fewer jobs ahead than asked for")


def _work(runs: Sequence[tuple[int, float]], start: int, stop: int) -> float:
    """Total duration of the jobs ahead numbered start..stop-1."""
    total, first = 0.0, 0
    for count, mean_s in runs:
        overlap = min(stop, first + count) - max(start, first)
        if overlap > 0:
            total += overlap * mean_s
        first += count
    return total


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
