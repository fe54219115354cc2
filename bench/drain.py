"""Worker drain rate: jobs/s one worker process finishes from a pre-filled queue.

Lanes: N `demo.echo` jobs submitted through the domain's `submit_job()` (so each has its SQL row),
then one `python -m worker --burst` (LanesWorker: RQ's forking Worker, the task registry, the SQL
mirror writing `started` and `succeeded` for every job, RQ's scheduler on, queues high normal low).

Bare RQ: N `bench.trivial.noop` jobs enqueued with the JSON serializer, then one
`rq worker --burst --with-scheduler` (RQ's default forking Worker, JSON serializer), one queue.

Two figures per side, both from the same run of the worker:
- `drain`: N / (last job finished - worker registered in Redis), the steady per-job cost;
- `drain incl. start-up`: N / (process exited - process spawned), imports, connections and
  shutdown included, what a `--burst` run costs end to end.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from backend.enums import JobStatus
from bench.env import BIN, BenchEnv, BenchError, Child, wait_for
from bench.lanes import LanesClient
from bench.report import Comparison, sides
from bench.submit import enqueue_bare

LANES_QUEUE = "normal"  # demo.echo's priority
BARE_QUEUE = "bench-drain"
POLL_S = 0.02
WORKER_START_TIMEOUT_S = 30.0
PER_JOB_TIMEOUT_S = 1.0  # generous: forking workers here do 30-100 jobs/s


@dataclass(frozen=True)
class DrainOptions:
    rounds: int
    jobs: int


@dataclass(frozen=True)
class DrainRun:
    drain_s: float  # worker registered -> last job finished
    total_s: float  # process spawned -> process exited


def run(env: BenchEnv, options: DrainOptions) -> list[Comparison]:
    notes = {"jobs_per_round": options.jobs}
    steady = Comparison("drain, 1 worker", "jobs/s", notes=dict(notes))
    whole = Comparison("drain incl. start-up", "jobs/s", notes=dict(notes))
    redis = env.redis()
    with LanesClient(redis_url=env.redis_url, database_url=env.database_url) as lanes:
        for round_no, side in sides(options.rounds):
            env.flush_redis()
            if side == "lanes":
                result = lanes_round(env, redis, lanes, jobs=options.jobs, round_no=round_no)
                steady.lanes.append(options.jobs / result.drain_s)
                whole.lanes.append(options.jobs / result.total_s)
            else:
                result = bare_round(env, redis, jobs=options.jobs, round_no=round_no)
                steady.bare.append(options.jobs / result.drain_s)
                whole.bare.append(options.jobs / result.total_s)
    return [steady, whole]


def lanes_round(env: BenchEnv, redis: Redis, lanes: LanesClient, *, jobs: int, round_no: int) -> DrainRun:
    ids = lanes.submit(jobs)
    name = f"lanes-drain-{round_no}"
    spawned = time.perf_counter()
    child = env.spawn(name, [sys.executable, "-m", "worker", "--burst", "--name", name], env.child_env())
    result = time_burst(child, redis, spawned=spawned, queue=LANES_QUEUE, jobs=jobs)
    succeeded = lanes.count_rows(JobStatus.SUCCEEDED, ids)
    if succeeded != jobs:
        raise BenchError(
            f"{succeeded} of {jobs} SQL rows are succeeded after the Lanes worker ran:\n{child.log_tail()}"
        )
    return result


def bare_round(env: BenchEnv, redis: Redis, *, jobs: int, round_no: int) -> DrainRun:
    enqueue_bare(Queue(BARE_QUEUE, connection=redis, serializer=JSONSerializer), jobs)
    name = f"bare-drain-{round_no}"
    args = [
        str(BIN / "rq"), "worker", "--burst", "--with-scheduler",
        "--url", env.redis_url, "--serializer", "rq.serializers.JSONSerializer",
        "--name", name, BARE_QUEUE,
    ]  # fmt: skip
    spawned = time.perf_counter()
    child = env.spawn(name, args, env.child_env())
    return time_burst(child, redis, spawned=spawned, queue=BARE_QUEUE, jobs=jobs)


def time_burst(child: Child, redis: Redis, *, spawned: float, queue: str, jobs: int) -> DrainRun:
    """Time a `--burst` worker from spawn to exit, and from registering to its last job done."""
    name = child.name
    worker_key = f"rq:worker:{name}"
    finished_key = f"rq:finished:{queue}"

    def registered() -> bool:
        if not child.alive():
            return True  # it may have registered, drained and left between two polls
        return bool(redis.exists(worker_key))

    wait_for(
        registered, timeout_s=WORKER_START_TIMEOUT_S, interval_s=0.005, message=f"worker {name} to start"
    )
    ready = time.perf_counter()

    def all_finished() -> bool:
        if int(redis.zcard(finished_key)) >= jobs:
            return True
        if not child.alive():
            raise BenchError(
                f"worker {name} exited with {redis.zcard(finished_key)} of {jobs} jobs finished:\n"
                f"{child.log_tail()}"
            )
        return False

    wait_for(all_finished, timeout_s=jobs * PER_JOB_TIMEOUT_S + 30, interval_s=POLL_S, message=f"{jobs} jobs")
    done = time.perf_counter()
    code = child.process.wait(timeout=60)
    exited = time.perf_counter()
    if code != 0:
        raise BenchError(f"worker {name} exited with code {code}:\n{child.log_tail()}")
    return DrainRun(drain_s=done - ready, total_s=exited - spawned)
