"""Where RQ holds a job, and what that says about its SQL row. The reconciler's eyes.

`look()` reads, for a batch of rows, each job's hash and its place in RQ's keys, all inside one
MULTI/EXEC so the batch is seen at one instant: `LPOS` on the queue and on the queue's
intermediate list (where a single-queue worker parks a job it has taken), `ZSCORE` in the
scheduled, deferred and ready registries, and the job's executions. For a job RQ says is started it
then reads each execution's deadline in `rq:wip:<queue>` and whether its worker is alive: RQ's key
for the worker, and Lanes's `lanes:alive:<worker>`, which lapses after three missed heartbeats (for
a worker whose RQ hash says it keeps one: a worker of an older Lanes is judged by RQ's signs).
Nothing is listed whole: every lookup is per job, and `LPOS` stops after `LPOS_QUEUE_LIMIT`
entries, so a queue longer than that is not searched (its jobs count as held, and `unchecked`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from redis import Redis
from rq import Queue, Worker
from rq.executions import ExecutionRegistry
from rq.job import JobStatus as RQStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from backend.enums import JobStatus
from backend.models import JobRow
from backend.queues import ALIVE_FIELD, LanesJob, alive_key, queue_for

#: Longest queue searched for a missing job; past it `LPOS` would cost too much per job.
LPOS_QUEUE_LIMIT = 10_000

_FINISHED_IN_RQ = {s.value for s in (RQStatus.FINISHED, RQStatus.FAILED, RQStatus.STOPPED, RQStatus.CANCELED)}


class Verdict(StrEnum):
    """What a row needs, given where RQ holds its job."""

    HELD = "held"  # RQ has it and the row agrees, or can only follow later
    LAGGING = "lagging"  # RQ has moved on; the row follows with sync_from_rq
    LOST = "lost"  # RQ holds it nowhere
    ABANDONED = "abandoned"  # RQ says started, and no live worker runs it


@dataclass(frozen=True)
class Whereabouts:
    """One job as RQ holds it."""

    status: str | None  # RQ's status of the job; None when RQ has no such job
    epoch: int  # which run of the row the RQ job is (its meta's epoch)
    on_queue: bool  # on its queue, or on the queue's intermediate list (taken by a worker)
    waiting: bool  # in the scheduled, deferred or ready registry
    executions: tuple[str, ...] = ()  # its entries in rq:wip:<queue>, "<job id>:<execution id>"
    running: bool = False  # an execution before its deadline, on a worker whose key is alive
    worker: str | None = None
    unchecked: int = 0  # 1 when its queue was too long to search


def verdict(row: JobRow, where: Whereabouts) -> Verdict:
    status = where.status
    if status is None or where.epoch < row.epoch:
        return Verdict.LOST  # nothing in RQ, or only the record of a run before a requeue
    if status in _FINISHED_IN_RQ:
        return Verdict.LAGGING
    if status == RQStatus.STARTED:
        if not where.running:
            return Verdict.ABANDONED
        return Verdict.HELD if row.status == JobStatus.STARTED.value else Verdict.LAGGING
    if status == RQStatus.SCHEDULED:
        if not where.waiting:
            return Verdict.LOST
        # RQ waiting out a retry while the row still says queued or started: the row missed it
        behind = row.status in (JobStatus.QUEUED.value, JobStatus.STARTED.value)
        return Verdict.LAGGING if behind else Verdict.HELD
    if status == RQStatus.QUEUED:
        return Verdict.HELD if where.on_queue or where.waiting or where.unchecked else Verdict.LOST
    # deferred: the job waits in its dependencies' dependents sets, whatever its registry says;
    # ready_to_enqueue, rate_limited: RQ's maintenance moves them on.
    return Verdict.HELD


def look(redis: Redis, rows: Sequence[JobRow], *, now: datetime) -> dict[str, Whereabouts]:
    """Where RQ holds the job of each row, read at one instant; keyed by job id."""
    queues = {name: queue_for(name, redis) for name in {row.queue for row in rows}}
    per_row = 7
    with redis.pipeline(transaction=True) as pipe:
        for queue in queues.values():
            pipe.llen(queue.key)
        for row in rows:
            queue = queues[row.queue]
            pipe.hmget(LanesJob.key_for(row.id), ["status", "meta", "worker_name"])
            pipe.lpos(queue.key, row.id, maxlen=LPOS_QUEUE_LIMIT)
            pipe.lpos(queue.intermediate_queue_key, row.id)
            pipe.zscore(queue.scheduled_job_registry.key, row.id)
            pipe.zscore(queue.deferred_job_registry.key, row.id)
            pipe.zscore(queue.ready_job_registry.key, row.id)
            pipe.zrange(ExecutionRegistry(job_id=row.id, connection=redis).key, 0, -1)
        replies = pipe.execute()
    lengths = dict(zip(queues, replies[: len(queues)], strict=True))
    replies = replies[len(queues) :]

    found: dict[str, Whereabouts] = {}
    for index, row in enumerate(rows):
        (status, meta, worker), on_queue, parked, scheduled, deferred, ready, execution_ids = replies[
            index * per_row : (index + 1) * per_row
        ]
        found[row.id] = Whereabouts(
            status=as_text(status),
            epoch=_epoch(meta),
            on_queue=on_queue is not None or parked is not None,
            waiting=any(score is not None for score in (scheduled, deferred, ready)),
            executions=tuple(f"{row.id}:{as_text(e)}" for e in execution_ids),
            worker=as_text(worker),
            unchecked=int(on_queue is None and lengths[row.queue] > LPOS_QUEUE_LIMIT),
        )
    return _with_liveness(redis, found, queues={row.id: queues[row.queue] for row in rows}, now=now)


def _with_liveness(
    redis: Redis, found: dict[str, Whereabouts], *, queues: dict[str, Queue], now: datetime
) -> dict[str, Whereabouts]:
    """Mark the started jobs that a live worker runs: an execution before its deadline, a live key."""
    started = [job_id for job_id, where in found.items() if where.status == RQStatus.STARTED]
    if not started:
        return found
    with redis.pipeline(transaction=True) as pipe:
        for job_id in started:
            where = found[job_id]
            worker_key = f"{Worker.redis_worker_namespace_prefix}{where.worker or ''}"
            pipe.exists(worker_key)
            pipe.hexists(worker_key, "death")
            pipe.hexists(worker_key, ALIVE_FIELD)
            pipe.exists(alive_key(where.worker or ""))
            for execution in where.executions:
                pipe.zscore(queues[job_id].started_job_registry.key, execution)
        replies = iter(pipe.execute())
    for job_id in started:
        where = found[job_id]
        exists, dead, keeps_alive_key, beating = next(replies), next(replies), next(replies), next(replies)
        alive = bool(exists) and not dead and where.worker is not None and (beating or not keeps_alive_key)
        deadlines = [next(replies) for _ in where.executions]
        in_time = any(deadline is not None and float(deadline) > now.timestamp() for deadline in deadlines)
        live = tuple(e for e, d in zip(where.executions, deadlines, strict=True) if d is not None)
        found[job_id] = replace(where, executions=live, running=alive and in_time)
    return found


def clear_leftovers(redis: Redis, queue_name: str, job_id: str) -> None:
    """Remove what is left in Redis of a lost job before it is enqueued again.

    Its id in lists and registries (a dangling id would run the new job twice), its hash and its
    results. Not its dependents set: jobs waiting on this one still wait on the new run.
    """
    queue = queue_for(queue_name, redis)
    with redis.pipeline(transaction=True) as pipe:
        pipe.lrem(queue.key, 0, job_id)
        pipe.lrem(queue.intermediate_queue_key, 0, job_id)
        for registry in (
            queue.scheduled_job_registry,
            queue.deferred_job_registry,
            queue.ready_job_registry,
            queue.finished_job_registry,
            queue.failed_job_registry,
            queue.canceled_job_registry,
        ):
            pipe.zrem(registry.key, job_id)
        pipe.delete(LanesJob.key_for(job_id), Result.get_key(job_id))
        pipe.execute()


def queue_names(redis: Redis, defaults: Iterable[str]) -> list[str]:
    """The given queues and every other queue RQ knows (`rq:queues`), in that order."""
    prefix = Queue.redis_queue_namespace_prefix
    known = sorted(as_text(key) or "" for key in redis.smembers(Queue.redis_queues_keys))
    return list(
        dict.fromkeys([*defaults, *(key.removeprefix(prefix) for key in known if key.startswith(prefix))])
    )


def as_text(value: bytes | str | None) -> str | None:
    """A Redis reply as text (None stays None)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _epoch(meta: bytes | None) -> int:
    if not meta:
        return 0
    try:
        return int(JSONSerializer.loads(meta).get("epoch", 0) or 0)
    except (ValueError, TypeError, AttributeError):
        return 0
