"""Firing lag: how late a job due at second T reaches its RQ queue, for 1 and for N due at once.

Lanes: `python -m scheduler --no-housekeeping` (LanesScheduler, `LANES_SCHEDULER_INTERVAL_S=1`,
the sync at its default `LANES_SCHEDULER_SYNC_S`) on db 0 of the private redis-server and the
benchmark's SQLite file. 1 + N `demo.echo` schedules are created once with `create_schedule`
(cron `0 0 1 1 *`, so nothing is due but what the benchmark sets); each measurement sets
`next_run_at = T` in SQL for 1 or for N of them and moves their entries to T
(`backend.schedule_entries.reschedule`), T being a whole second 1.3-2.3 s ahead, as a cron
schedule's next time is known ahead. The daemon fires each as a job with its own SQL row.

Bare RQ: `rqscheduler --interval 1` (rq-scheduler's own `Scheduler.run()`, default job class)
on db 1 of the same server (both use rq-scheduler's key names, so they must not share a db), with
1 or N `bench.trivial.noop` jobs put in with `Scheduler.enqueue_at(T, ...)` for a T chosen alike.

Per job, lag = RQ's `enqueued_at` on the job hash - T. Lanes puts a pass's firings on their queues
in one MULTI/EXEC, so its jobs are stamped when the transaction is built and appear together when
it runs; `all N on the queue` is the time, polled every 2 ms from this process, at which the
queue's length reached N, which counts that. No worker runs: the jobs stay on the queue.

Measurements run one at a time (both schedulers stay up; the idle one does a pass a second), the
side that goes first alternating by round.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.job import Job
from rq.utils import utcparse
from rq_scheduler import Scheduler
from sqlalchemy import func, select, update

from backend.firing import firing_job_id
from backend.models import JobRow, ScheduleRow
from backend.schedule_entries import reschedule
from backend.schedules import create_schedule
from backend.tasks import registry
from bench.env import BIN, BenchEnv, BenchError, Child, say, wait_for
from bench.lanes import PARAMS, TASK, LanesClient
from bench.report import Comparison, Floor, sides
from bench.trivial import noop

LANES_QUEUE_KEY = "rq:queue:normal"  # demo.echo's priority
BARE_QUEUE = "bench-scheduler"
BARE_DB = 1
CRON = "0 0 1 1 *"  # once a year: between measurements no schedule is due
INTERVAL_S = 1
LEAD_S = 1.3  # T is the first whole second at least this far ahead of the set-up
POLL_S = 0.002
START_TIMEOUT_S = 30.0
FIRE_TIMEOUT_S = 60.0
LANES_NAME = "bench-lanes-scheduler"


@dataclass(frozen=True)
class SchedulerOptions:
    rounds: int
    schedules: int  # how many are due the same second in the "many" case


@dataclass
class Firing:
    """One measurement: every job's lag and when the N-th was on the queue, ms after T."""

    lags_ms: list[float]
    all_on_queue_ms: float
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.lags_ms)

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.lags_ms)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    @property
    def max_ms(self) -> float:
        return max(self.lags_ms)


def run(env: BenchEnv, options: SchedulerOptions) -> list[Comparison]:
    n = options.schedules
    notes: dict[str, Any] = {
        "interval_s": INTERVAL_S,
        "lead_s": f"{LEAD_S}-{LEAD_S + 1}",
        "lanes": "python -m scheduler --no-housekeeping, LANES_SCHEDULER_SYNC_S default",
        "bare": f"rqscheduler --interval {INTERVAL_S}",
        "lag": "RQ enqueued_at - due second",
    }
    one = Comparison("firing lag, 1 due", "ms", better="lower", notes={**notes, "due": 1})
    p50 = Comparison(f"firing lag, {n} due, p50", "ms", better="lower", notes={**notes, "due": n})
    worst = Comparison(f"firing lag, {n} due, max", "ms", better="lower", notes={**notes, "due": n})
    whole = Comparison(
        f"all {n} on the queue after due",
        "ms",
        better="lower",
        notes={**notes, "due": n, "how": f"queue length polled every {POLL_S * 1000:.0f} ms"},
        floor=Floor.limit(2000.0),  # issue 11: 1000 schedules due at once all fire within 2 s
    )
    detail: dict[str, Any] = {"lanes_p95_ms": [], "bare_p95_ms": [], "lanes_sync_in_firing_pass": []}

    env.flush_redis()
    bare_url = env.redis_url.rsplit("/", 1)[0] + f"/{BARE_DB}"
    bare_redis = Redis.from_url(bare_url)
    try:
        with LanesClient(redis_url=env.redis_url, database_url=env.database_url) as lanes:
            say(f"scheduler: creating {1 + n} schedules")
            single = create_schedules(lanes, 1, prefix="one")
            many = create_schedules(lanes, n, prefix="many")
            lanes_child = start_lanes_scheduler(env, lanes.redis)
            bare_child = start_bare_scheduler(env, bare_redis, bare_url)
            # Warm-up, not counted: a long-running daemon has compiled its SQL and opened its pages.
            warm = lanes_firing(lanes, lanes_child, single), bare_firing(bare_redis, bare_child, 1)
            detail["warmup_1_due_ms"] = {"lanes": round(warm[0].max_ms, 2), "bare": round(warm[1].max_ms, 2)}
            for round_no, side in sides(options.rounds):
                if side == "lanes":
                    a = lanes_firing(lanes, lanes_child, single)
                    b = lanes_firing(lanes, lanes_child, many)
                    target = "lanes"
                    detail["lanes_sync_in_firing_pass"].append([a.notes["sync"], b.notes["sync"]])
                else:
                    a = bare_firing(bare_redis, bare_child, 1)
                    b = bare_firing(bare_redis, bare_child, n)
                    target = "bare"
                getattr(one, target).append(a.max_ms)
                getattr(p50, target).append(b.p50_ms)
                getattr(worst, target).append(b.max_ms)
                getattr(whole, target).append(b.all_on_queue_ms)
                detail[f"{target}_p95_ms"].append(round(b.p95_ms, 2))
                say(
                    f"scheduler round {round_no} {side}: 1 due {a.max_ms:.1f} ms; {n} due p50 "
                    f"{b.p50_ms:.1f} max {b.max_ms:.1f} all on queue {b.all_on_queue_ms:.1f} ms"
                )
            for child in (lanes_child, bare_child):
                if not child.alive():
                    raise BenchError(f"{child.name} exited during the benchmark:\n{child.log_tail()}")
                child.stop()
    finally:
        bare_redis.close()
    for row in (p50, worst, whole):
        row.notes.update(detail)
    one.notes["lanes_sync_in_firing_pass"] = [pair[0] for pair in detail["lanes_sync_in_firing_pass"]]
    one.notes["warmup_1_due_ms"] = detail["warmup_1_due_ms"]
    return [one, p50, worst, whole]


# -- Lanes -------------------------------------------------------------------------------------


def create_schedules(lanes: LanesClient, count: int, *, prefix: str) -> list[str]:
    """`count` schedules through the domain's `create_schedule` (row and entry), a session each."""
    ids = []
    for i in range(count):
        with lanes.sessions() as session:
            row = create_schedule(
                session=session,
                redis=lanes.redis,
                settings=lanes.settings,
                tasks=registry,
                name=f"bench-{prefix}-{i}",
                task=TASK,
                cron=CRON,
                params=PARAMS,
            )
            ids.append(row.id)
    return ids


def start_lanes_scheduler(env: BenchEnv, redis: Redis) -> Child:
    args = [sys.executable, "-m", "scheduler", "--no-housekeeping", "--name", LANES_NAME]
    child = env.spawn("lanes-scheduler", args, env.child_env(scheduler_interval_s=str(INTERVAL_S)))
    key = f"rq:scheduler_instance:{LANES_NAME}"

    def synced() -> bool:  # a heartbeat after its first pass, which syncs the entries
        if not child.alive():
            raise BenchError(f"the Lanes scheduler exited at start:\n{child.log_tail()}")
        return bool(redis.hexists(key, "last_sync_at"))

    wait_for(synced, timeout_s=START_TIMEOUT_S, interval_s=0.02, message="the Lanes scheduler to start")
    return child


def lanes_firing(lanes: LanesClient, child: Child, schedule_ids: list[str]) -> Firing:
    """Make `schedule_ids` due at the next whole second past the lead; time their firings."""
    due_s = math.ceil(time.time() + LEAD_S)
    due = datetime.fromtimestamp(due_s, UTC)
    with lanes.sessions() as session:
        session.execute(update(ScheduleRow).where(ScheduleRow.id.in_(schedule_ids)).values(next_run_at=due))
        session.commit()
    reschedule(lanes.redis, dict.fromkeys(schedule_ids, due))
    # The pass before T must end after the entries moved, to plan its pause with them.
    check_lead(due_s, needed_s=INTERVAL_S + 0.1, side="Lanes")
    redis = lanes.redis
    on_queue_s = wait_on_queue(redis, LANES_QUEUE_KEY, len(schedule_ids), due_s=due_s, child=child)
    expected = {firing_job_id(sid, due) for sid in schedule_ids}
    found = {_text(job_id) for job_id in redis.lrange(LANES_QUEUE_KEY, 0, -1)}
    if found != expected:
        raise BenchError(
            f"the Lanes queue holds {len(found & expected)} of the {len(expected)} firings due at "
            f"{due:%H:%M:%S} and {len(found - expected)} other jobs:\n{child.log_tail()}"
        )
    with lanes.sessions() as session:
        rows = session.scalar(select(func.count()).select_from(JobRow).where(JobRow.id.in_(expected)))
    if rows != len(expected):
        raise BenchError(f"{rows} of {len(expected)} firings have their SQL row")
    lags = enqueued_lags_ms(redis, sorted(expected), due_s)
    sync = sync_in_firing_pass(redis, due_s=due_s, until_s=on_queue_s)
    clear(redis, LANES_QUEUE_KEY, expected)
    return Firing(lags, (on_queue_s - due_s) * 1000, notes={"sync": sync})


def sync_in_firing_pass(redis: Redis, *, due_s: int, until_s: float) -> bool | None:
    """Did the pass that fired also sync the entries (every LANES_SCHEDULER_SYNC_S), first?

    The pass's sync time shows in the heartbeat of the pass after it, at most an interval later.
    """
    key = f"rq:scheduler_instance:{LANES_NAME}"

    def next_heartbeat() -> dict[bytes, bytes] | None:
        fields: dict[bytes, bytes] = redis.hgetall(key)  # type: ignore[assignment]
        return fields if float(fields.get(b"heartbeat", 0)) > until_s else None

    try:
        fields = wait_for(next_heartbeat, timeout_s=INTERVAL_S + 2, interval_s=0.02, message="a heartbeat")
    except BenchError:
        return None
    return due_s <= float(fields.get(b"last_sync_at", 0)) <= until_s


# -- bare rq-scheduler -------------------------------------------------------------------------


def start_bare_scheduler(env: BenchEnv, redis: Redis, url: str) -> Child:
    args = [str(BIN / "rqscheduler"), "--url", url, "--interval", str(INTERVAL_S)]
    child = env.spawn("bare-scheduler", args, env.child_env())

    def born() -> bool:
        if not child.alive():
            raise BenchError(f"rqscheduler exited at start:\n{child.log_tail()}")
        return bool(redis.keys("rq:scheduler_instance:*"))

    wait_for(born, timeout_s=START_TIMEOUT_S, interval_s=0.02, message="rqscheduler to start")
    return child


def bare_firing(redis: Redis, child: Child, count: int) -> Firing:
    """`count` jobs put in with `enqueue_at(T)`; time their arrival on the queue."""
    scheduler = Scheduler(queue_name=BARE_QUEUE, connection=redis)
    due_s = math.ceil(time.time() + LEAD_S)
    due = datetime.fromtimestamp(due_s, UTC)
    ids = {scheduler.enqueue_at(due, noop, **PARAMS).id for _ in range(count)}
    check_lead(due_s, needed_s=0.1, side="bare")
    key = f"rq:queue:{BARE_QUEUE}"
    on_queue_s = wait_on_queue(redis, key, count, due_s=due_s, child=child)
    found = {_text(job_id) for job_id in redis.lrange(key, 0, -1)}
    if found != ids:
        raise BenchError(f"the bare queue holds {len(found & ids)} of {count} jobs:\n{child.log_tail()}")
    lags = enqueued_lags_ms(redis, sorted(ids), due_s)
    clear(redis, key, ids)
    return Firing(lags, (on_queue_s - due_s) * 1000)


# -- shared ------------------------------------------------------------------------------------


def check_lead(due_s: int, *, needed_s: float, side: str) -> None:
    left = due_s - time.time()
    if left < needed_s:
        raise BenchError(
            f"{side} set-up ended {left:.2f} s before the due second, {needed_s:.1f} s needed: "
            "is the machine very busy?"
        )


def wait_on_queue(redis: Redis, key: str, count: int, *, due_s: int, child: Child) -> float:
    """Sleep until just before `due_s`, then poll the queue's length: when it reached `count`."""
    time.sleep(max(0.0, due_s - 0.05 - time.time()))

    def reached() -> float | None:
        length = int(redis.llen(key))
        seen = time.time()
        if length >= count:
            return seen
        if not child.alive():
            raise BenchError(f"{child.name} exited with {length} of {count} jobs queued:\n{child.log_tail()}")
        return None

    found: float = wait_for(
        reached, timeout_s=FIRE_TIMEOUT_S, interval_s=POLL_S, message=f"{count} jobs on {key}"
    )
    return found


def enqueued_lags_ms(redis: Redis, job_ids: list[str], due_s: int) -> list[float]:
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "enqueued_at")
        stamps = pipe.execute()
    if any(stamp is None for stamp in stamps):
        raise BenchError("a queued job has no enqueued_at")
    return [(utcparse(_text(stamp)).timestamp() - due_s) * 1000 for stamp in stamps]


def clear(redis: Redis, queue_key: str, job_ids: set[str]) -> None:
    """Take the measured jobs away, so the next measurement starts from an empty queue."""
    keys = [Job.key_for(job_id) for job_id in job_ids]
    with redis.pipeline() as pipe:
        pipe.delete(queue_key)
        for start in range(0, len(keys), 500):
            pipe.delete(*keys[start : start + 500])
        pipe.execute()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
