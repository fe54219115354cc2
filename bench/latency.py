"""Enqueue-to-start latency: how soon an idle worker starts a job that has just been put on its queue.

Lanes: one `python -m worker normal --mode M` (mirror on), idle and blocked on its queue; each
sample is one `demo.echo` submitted through the domain's `submit_job()`. In `fork` mode its
work-horse runs the default `LANES_HORSE_JOBS` jobs (noted as `horse_jobs`).

Bare RQ: one `rq worker` (JSON serializer; RQ's forking `Worker` against Lanes' `fork` mode, its
`SimpleWorker` against `simple`) on one queue; each sample is one `Queue.enqueue` of
`bench.trivial.noop`.

A sample is RQ's own record of the job: `started_at - enqueued_at`, both written by RQ on this
machine, so the two sides are timed alike. The next job is put on the queue only when the last
one has finished and the worker is idle again. Reported: p50 and p99 of each round, in ms.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from bench.drain import DEFAULT_HORSE_JOBS
from bench.env import BIN, BenchEnv, Child, wait_for
from bench.lanes import LanesClient
from bench.report import Comparison, sides
from bench.submit import PARAMS
from bench.trivial import noop

LANES_QUEUE = "normal"
BARE_QUEUE = "bench-latency"
JOB_TIMEOUT_S = 10.0
MODES = ("fork", "simple")
BARE_CLASS = {"fork": "rq.Worker", "simple": "rq.SimpleWorker"}


@dataclass(frozen=True)
class LatencyOptions:
    rounds: int
    samples: int
    modes: tuple[str, ...] = MODES


def run(env: BenchEnv, options: LatencyOptions) -> list[Comparison]:
    rows = []
    redis = env.redis()
    with LanesClient(redis_url=env.redis_url, database_url=env.database_url) as lanes:
        for mode in options.modes:
            notes: dict[str, object] = {
                "samples_per_round": options.samples,
                "mode": mode,
                "bare": BARE_CLASS[mode],
            }
            if mode == "fork":
                notes["horse_jobs"] = DEFAULT_HORSE_JOBS
            label = f"enqueue to start, idle {'forking' if mode == 'fork' else 'simple'} worker"
            p50 = Comparison(f"{label}, p50", "ms", notes=dict(notes), better="lower")
            p99 = Comparison(f"{label}, p99", "ms", notes=dict(notes), better="lower")
            for round_no, side in sides(options.rounds):
                env.flush_redis()
                if side == "lanes":
                    samples = lanes_round(env, redis, lanes, mode, options.samples, round_no)
                    p50.lanes.append(percentile(samples, 50))
                    p99.lanes.append(percentile(samples, 99))
                else:
                    samples = bare_round(env, redis, mode, options.samples, round_no)
                    p50.bare.append(percentile(samples, 50))
                    p99.bare.append(percentile(samples, 99))
            rows += [p50, p99]
    return rows


def lanes_round(
    env: BenchEnv, redis: Redis, lanes: LanesClient, mode: str, samples: int, round_no: int
) -> list[float]:
    name = f"lanes-latency-{mode}-{round_no}"
    args = [sys.executable, "-m", "worker", LANES_QUEUE, "--mode", mode, "--name", name]
    worker = env.spawn(name, args, env.child_env())
    try:
        return sample(redis, worker, samples, lambda: lanes.submit(1)[0])
    finally:
        worker.stop()


def bare_round(env: BenchEnv, redis: Redis, mode: str, samples: int, round_no: int) -> list[float]:
    name = f"bare-latency-{mode}-{round_no}"
    args = [
        str(BIN / "rq"), "worker", "--url", env.redis_url, "--worker-class", BARE_CLASS[mode],
        "--serializer", "rq.serializers.JSONSerializer", "--name", name, BARE_QUEUE,
    ]  # fmt: skip
    worker = env.spawn(name, args, env.child_env())
    queue = Queue(BARE_QUEUE, connection=redis, serializer=JSONSerializer)
    try:
        return sample(redis, worker, samples, lambda: queue.enqueue(noop, kwargs=PARAMS).id)
    finally:
        worker.stop()


def sample(redis: Redis, worker: Child, samples: int, put: Callable[[], str]) -> list[float]:
    """Put one job at a time on the idle worker's queue; its enqueue-to-start delay in ms each."""
    wait_idle(redis, worker)
    delays = []
    for _ in range(samples):
        job_id = put()
        job = wait_for(
            partial(finished, redis, job_id),
            timeout_s=JOB_TIMEOUT_S,
            interval_s=0.005,
            message=f"job {job_id} to finish",
        )
        assert job is not None and job.started_at and job.enqueued_at
        delays.append((job.started_at - job.enqueued_at).total_seconds() * 1000)
        wait_idle(redis, worker)
    return delays


def finished(redis: Redis, job_id: str) -> Job | None:
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    return job if job.get_status(refresh=False) == "finished" and job.started_at and job.enqueued_at else None


def wait_idle(redis: Redis, worker: Child) -> None:
    """Until the worker says idle and sits in its blocking pop (BLPOP or BLMOVE) on the queue."""

    def idle() -> bool:
        if not worker.alive():
            raise RuntimeError(f"worker {worker.name} exited:\n{worker.log_tail()}")
        if redis.hget(f"rq:worker:{worker.name}", "state") != b"idle":
            return False
        return any(c["cmd"] in ("blpop", "blmove") and "b" in c["flags"] for c in redis.client_list())

    wait_for(idle, timeout_s=30, interval_s=0.005, message=f"worker {worker.name} to be idle")


def percentile(values: list[float], pct: float) -> float:
    """The `pct`th percentile of `values` (inclusive method, as numpy's default)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]
