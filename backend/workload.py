"""What Redis says about the work waiting and under way: queue depths, where a job waits, and
the live workers with what each is running. Read cheaply: `LPOS` and `LLEN`, never a list of ids.

A worker is live while RQ's `rq:worker:<name>` hash exists (it expires when heartbeats stop) and
carries no `death` stamp (a worker that stopped cleanly). A busy worker's executions are in
`rq:worker:<name>:executions`; each execution's `created_at` is when the worker took the job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.registry import ScheduledJobRegistry
from rq.worker_registration import REDIS_WORKER_KEYS

from backend.enums import QUEUE_ORDER

QUEUE_KEY = "rq:queue:{}"
SCAN_FROM_EACH_END = 1_000  # list entries `LPOS` may scan from the head, and from the tail
SPAN_MAX = 2_000  # list entries read in one LRANGE between the first and last deep job of a page
#: Jobs asked about in one queue from which its two ends are read whole (two `LRANGE`s of
#: `SCAN_FROM_EACH_END`) rather than two `LPOS` a job: each command costs the client more than
#: Redis, so a page of 200 waiting jobs costs 4 commands instead of 400.
ENDS_READ_MIN = 16


@dataclass(frozen=True)
class Execution:
    """A job a worker is running."""

    job_id: str
    started_at: datetime | None  # when the worker took the job (RQ's execution `created_at`)


@dataclass(frozen=True)
class LiveWorker:
    """A worker with a heartbeat: the queues it serves, in its order, and what it runs now."""

    queues: tuple[str, ...]
    running: tuple[Execution, ...]


@dataclass(frozen=True)
class Workload:
    """One reading of Redis for a set of jobs."""

    indexes: list[int | None]  # LPOS of each job asked about in its queue, None when not in it
    depths: dict[str, int]  # LLEN of every queue in QUEUE_ORDER
    workers: list[LiveWorker]  # live ones


def read_workload(redis: Redis, jobs: Sequence[tuple[str, str]]) -> Workload:
    """Where each (job id, queue) of `jobs` waits, how deep every queue is (in one MULTI), the live
    workers, and when each busy one took its job. Two Redis round trips, three if a worker is busy.

    `LPOS` costs Redis a scan from one end of the list, so each job is looked for within
    `SCAN_FROM_EACH_END` entries of the head (about to run) and of the tail (just submitted); for
    a queue asked about `ENDS_READ_MIN` jobs or more, those two stretches are read instead. Of
    the jobs in the middle of a longer queue, the first and the last per queue cost a scan from the
    tail, in the second round trip; the others are read from the stretch of the list between
    those two when it is short (a page of the job list is in the queue's order: one more round
    trip), and only those not there cost a scan each (one more). A deep job in RQ's scheduled
    registry is in no queue and is not looked for (one round trip more when there are deep jobs).
    """
    names = [q.value for q in QUEUE_ORDER]
    names += sorted({queue for _, queue in jobs} - set(names))
    asked = Counter(queue for _, queue in jobs)
    read_ends = sorted(queue for queue, count in asked.items() if count >= ENDS_READ_MIN)
    looked_up = [(job_id, queue) for job_id, queue in jobs if queue not in read_ends]
    with redis.pipeline(transaction=True) as pipe:
        pipe.smembers(REDIS_WORKER_KEYS)
        for name in names:
            pipe.llen(QUEUE_KEY.format(name))
        for queue in read_ends:
            pipe.lrange(QUEUE_KEY.format(queue), 0, SCAN_FROM_EACH_END - 1)
            pipe.lrange(QUEUE_KEY.format(queue), -SCAN_FROM_EACH_END, -1)
        for job_id, queue in looked_up:
            pipe.lpos(QUEUE_KEY.format(queue), job_id, maxlen=SCAN_FROM_EACH_END)
            pipe.lpos(QUEUE_KEY.format(queue), job_id, rank=-1, maxlen=SCAN_FROM_EACH_END)
        replies = pipe.execute()
    keys = sorted(_text(key) for key in replies[0])
    depths = dict(zip(names, (int(n) for n in replies[1 : 1 + len(names)]), strict=True))
    ends = replies[1 + len(names) : 1 + len(names) + 2 * len(read_ends)]
    at_ends: dict[str, dict[bytes | str, int]] = {}  # by queue: members as Redis gave them
    for queue, head, tail in zip(read_ends, ends[::2], ends[1::2], strict=True):
        first_of_tail = depths[queue] - len(tail)  # the same MULTI: LLEN and both reads agree
        at_ends[queue] = {member: first_of_tail + i for i, member in enumerate(tail)}
        at_ends[queue].update({member: i for i, member in enumerate(head)})  # as LPOS: the first
    found = iter(replies[1 + len(names) + 2 * len(read_ends) :])
    indexes: list[int | None] = []
    for job_id, queue in jobs:
        if queue in read_ends:
            members = at_ends[queue]
            indexes.append(members.get(job_id.encode(), members.get(job_id)))
        else:
            head, tail = next(found), next(found)
            indexes.append(None if head is None and tail is None else int(head if head is not None else tail))
    deep = [
        n
        for n, ((_, queue), index) in enumerate(zip(jobs, indexes, strict=True))
        if index is None and depths[queue] > 2 * SCAN_FROM_EACH_END
    ]
    if deep:
        deep = _not_scheduled(redis, jobs, deep)

    # The jobs deep in a queue: the first and the last of them per queue (the anchors) are looked
    # for in the whole list; a page's others sit between them (a queue is in submit order, and so
    # is the job list), so one read of that stretch finds them.
    by_queue: dict[str, list[int]] = {}
    for n in deep:
        by_queue.setdefault(jobs[n][1], []).append(n)
    anchors = sorted({n for members in by_queue.values() for n in (members[0], members[-1])})
    with redis.pipeline(transaction=False) as pipe:
        for n in anchors:  # from the tail: a page of the job list is newest first
            pipe.lpos(QUEUE_KEY.format(jobs[n][1]), jobs[n][0], rank=-1)
        for key in keys:
            pipe.hmget(key, "queues", "death")
            pipe.smembers(WORKER_EXECUTIONS_KEY_TEMPLATE.format(key.removeprefix("rq:worker:")))
        replies = pipe.execute() if anchors or keys else []
    for n, index in zip(anchors, replies, strict=False):
        indexes[n] = None if index is None else int(index)
    replies = replies[len(anchors) :]
    if len(deep) > len(anchors):
        _between_anchors(redis, jobs, indexes, by_queue)
    live: list[tuple[tuple[str, ...], list[str]]] = []
    for (queues, death), executions in zip(replies[::2], replies[1::2], strict=True):
        if queues is not None and death is None:  # else expired (no heartbeat) or stopped
            live.append((tuple(_text(queues).split(",")), sorted(_text(m) for m in executions)))

    composite = [key for _, members in live for key in members]
    started: dict[str, datetime | None] = {}
    if composite:
        with redis.pipeline(transaction=False) as pipe:
            for key in composite:
                pipe.hget(f"rq:execution:{key}", "created_at")
            stamps = pipe.execute()
        started = {
            key: None if stamp is None else datetime.fromtimestamp(float(stamp), UTC)
            for key, stamp in zip(composite, stamps, strict=True)
        }
    workers = [
        LiveWorker(
            queues=queues,
            running=tuple(Execution(key.split(":", 1)[0], started.get(key)) for key in members),
        )
        for queues, members in live
    ]
    return Workload(indexes=indexes, depths=depths, workers=workers)


def _not_scheduled(redis: Redis, jobs: Sequence[tuple[str, str]], deep: list[int]) -> list[int]:
    """Of the `deep` jobs (indexes into `jobs`), those not in RQ's scheduled registry of their
    queue. A job there (a retry whose wait is over but that no worker's scheduler has moved back
    yet, or a `run_at` come due) is in no queue, and looking for it would cost a scan of the
    whole list: 5–7 ms of Redis in a queue of 66,000 jobs."""
    with redis.pipeline(transaction=False) as pipe:
        for n in deep:
            job_id, queue = jobs[n]
            pipe.zscore(ScheduledJobRegistry.key_template.format(queue), job_id)
        scores = pipe.execute()
    return [n for n, score in zip(deep, scores, strict=True) if score is None]


def _between_anchors(
    redis: Redis, jobs: Sequence[tuple[str, str]], indexes: list[int | None], by_queue: dict[str, list[int]]
) -> None:
    """Fill in `indexes` of the deep jobs between each queue's anchors: from one `LRANGE` of the
    stretch between them when it is at most `SPAN_MAX` entries (a page of neighbours), and by a
    scan from the tail for any other (a page of a rare filter spreads wider: reading the stretch
    would cost more than scanning, since every entry read is parsed here)."""
    stretches: list[tuple[str, int, int]] = []
    for queue, members in by_queue.items():
        found = sorted(i for n in (members[0], members[-1]) if (i := indexes[n]) is not None)
        if found and found[-1] - found[0] <= SPAN_MAX:
            stretches.append((queue, found[0], found[-1]))
    with redis.pipeline(transaction=False) as pipe:
        for queue, start, stop in stretches:
            pipe.lrange(QUEUE_KEY.format(queue), start, stop)
        ranges = pipe.execute() if stretches else []
    seen: dict[tuple[str, str], int] = {}
    for (queue, start, _), members in zip(stretches, ranges, strict=True):
        seen.update({(queue, _text(member)): start + i for i, member in enumerate(members)})
    missing = []
    for members in by_queue.values():
        for n in members:
            if indexes[n] is None:
                job_id, queue = jobs[n]
                indexes[n] = seen.get((queue, job_id))
                if indexes[n] is None:
                    missing.append(n)
    if missing:
        with redis.pipeline(transaction=False) as pipe:
            for n in missing:
                pipe.lpos(QUEUE_KEY.format(jobs[n][1]), jobs[n][0], rank=-1)
            for n, index in zip(missing, pipe.execute(), strict=True):
                indexes[n] = None if index is None else int(index)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
