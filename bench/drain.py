"""Worker drain rate: jobs/s a worker drains from a pre-filled queue, per mode and process count.

Lanes: N `demo.echo` jobs submitted through the domain's `submit_job()` (so each has its SQL row),
then `python -m worker --burst --mode M --processes P` (the task registry, the SQL mirror writing
`started` and `succeeded` for every job, RQ's scheduler on, queues high webhooks normal low). In
`fork` mode each work-horse runs the default `LANES_HORSE_JOBS` jobs (noted as `horse_jobs`).

Bare RQ: N `bench.trivial.noop` jobs enqueued with the JSON serializer, then P processes of
`rq worker --burst --with-scheduler` (RQ's forking `Worker`, or `--worker-class rq.SimpleWorker`
for the simple rows), one queue.

Each setup gives two figures from the same run:
- `drain`: N / (last job finished - first worker registered in Redis), the steady per-job cost;
- `drain incl. start-up` (one forking process only): N / (processes exited - spawned), imports,
  connections and shutdown included, what a `--burst` run costs end to end;

and `CPU per job`: the CPU time (user + system) of the worker processes and their children (a
forking worker's horses, RQ's scheduler process), less that of a run with no job (start-up and
exit), over N. A busy machine stretches the rates; it hardly moves this.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from backend.config import Settings
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
#: What a forking worker's horse runs before a new one is forked, when nothing says otherwise.
DEFAULT_HORSE_JOBS = Settings.model_fields["horse_jobs"].default


@dataclass(frozen=True)
class DrainOptions:
    rounds: int
    jobs: int
    setups: tuple[Setup, ...] = ()  # default: SETUPS


@dataclass(frozen=True)
class Setup:
    """One way to run workers, on both sides: Lanes' `--mode`, RQ's worker class, how many."""

    mode: str  # "fork" or "simple"
    processes: int

    @property
    def label(self) -> str:
        what = "forking worker" if self.mode == "fork" else "simple worker"
        return f"drain, {self.processes} {what}{'s' if self.processes > 1 else ''}"

    @property
    def bare_class(self) -> str:
        return "rq.Worker" if self.mode == "fork" else "rq.SimpleWorker"


SETUPS = (Setup("fork", 1), Setup("simple", 1), Setup("fork", 2), Setup("simple", 2))


@dataclass(frozen=True)
class DrainRun:
    drain_s: float  # worker registered -> last job finished
    total_s: float  # process spawned -> process exited
    cpu_s: float  # CPU time (user + system) of the worker processes and their children, start-up included


def run(env: BenchEnv, options: DrainOptions) -> list[Comparison]:
    rows: list[Comparison] = []
    redis = env.redis()
    with LanesClient(redis_url=env.redis_url, database_url=env.database_url) as lanes:
        for setup in options.setups or SETUPS:
            notes = {"jobs_per_round": options.jobs, "mode": setup.mode, "processes": setup.processes}
            if setup.mode == "fork":
                notes["horse_jobs"] = DEFAULT_HORSE_JOBS
            notes["bare"] = f"{setup.processes} x rq worker --worker-class {setup.bare_class}"
            steady = Comparison(setup.label, "jobs/s", notes=dict(notes))
            whole = Comparison("drain incl. start-up", "jobs/s", notes=dict(notes))
            cpu = Comparison(
                f"CPU per job, {setup.label.removeprefix('drain, ')}", "ms", notes=dict(notes), better="lower"
            )
            # The CPU of a run with no job, start-up and exit alone, taken off each run's below.
            env.flush_redis()
            idle_lanes = lanes_round(env, redis, lanes, setup, jobs=0, round_no=0).cpu_s
            idle_bare = bare_round(env, redis, setup, jobs=0, round_no=0).cpu_s
            for round_no, side in sides(options.rounds):
                env.flush_redis()
                if side == "lanes":
                    result = lanes_round(env, redis, lanes, setup, jobs=options.jobs, round_no=round_no)
                    steady.lanes.append(options.jobs / result.drain_s)
                    whole.lanes.append(options.jobs / result.total_s)
                    cpu.lanes.append(1000 * (result.cpu_s - idle_lanes) / options.jobs)
                else:
                    result = bare_round(env, redis, setup, jobs=options.jobs, round_no=round_no)
                    steady.bare.append(options.jobs / result.drain_s)
                    whole.bare.append(options.jobs / result.total_s)
                    cpu.bare.append(1000 * (result.cpu_s - idle_bare) / options.jobs)
            rows.append(steady)
            if setup == Setup("fork", 1):
                rows.append(whole)
            rows.append(cpu)
    return rows


def lanes_round(
    env: BenchEnv, redis: Redis, lanes: LanesClient, setup: Setup, *, jobs: int, round_no: int
) -> DrainRun:
    ids = lanes.submit(jobs)
    name = f"lanes-{setup.mode}{setup.processes}-{round_no}"
    args = [sys.executable, "-m", "worker", "--burst", "--mode", setup.mode, "--name", name]
    args += ["--processes", str(setup.processes)]
    names = [name] if setup.processes == 1 else [f"{name}-{i}" for i in range(1, setup.processes + 1)]
    spawned = time.perf_counter()
    cpu_before = children_cpu_s()
    child = env.spawn(name, args, env.child_env())
    result = time_burst(
        [child], redis, names=names, spawned=spawned, cpu_before=cpu_before, queue=LANES_QUEUE, jobs=jobs
    )
    succeeded = lanes.count_rows(JobStatus.SUCCEEDED, ids)
    if succeeded != jobs:
        raise BenchError(
            f"{succeeded} of {jobs} SQL rows are succeeded after the Lanes worker ran:\n{child.log_tail()}"
        )
    return result


def bare_round(env: BenchEnv, redis: Redis, setup: Setup, *, jobs: int, round_no: int) -> DrainRun:
    enqueue_bare(Queue(BARE_QUEUE, connection=redis, serializer=JSONSerializer), jobs)
    names = [f"bare-{setup.mode}{setup.processes}-{round_no}-{i}" for i in range(1, setup.processes + 1)]
    spawned = time.perf_counter()
    cpu_before = children_cpu_s()
    children = []
    for name in names:
        args = [
            str(BIN / "rq"), "worker", "--burst", "--with-scheduler",
            "--url", env.redis_url, "--serializer", "rq.serializers.JSONSerializer",
            "--worker-class", setup.bare_class, "--name", name, BARE_QUEUE,
        ]  # fmt: skip
        children.append(env.spawn(name, args, env.child_env()))
    return time_burst(
        children, redis, names=names, spawned=spawned, cpu_before=cpu_before, queue=BARE_QUEUE, jobs=jobs
    )


def time_burst(
    children: list[Child],
    redis: Redis,
    *,
    names: list[str],
    spawned: float,
    cpu_before: float,
    queue: str,
    jobs: int,
) -> DrainRun:
    """Time `--burst` workers from spawn to exit, and from the first registering to the last job done."""
    finished_key = f"rq:finished:{queue}"

    def gone() -> bool:
        return not any(child.alive() for child in children)

    def registered() -> bool:
        # Gone counts: they may have registered, drained and left between two polls.
        return gone() or any(redis.exists(f"rq:worker:{name}") for name in names)

    wait_for(
        registered, timeout_s=WORKER_START_TIMEOUT_S, interval_s=0.005, message=f"workers {names} to start"
    )
    ready = time.perf_counter()

    def all_finished() -> bool:
        if int(redis.zcard(finished_key)) >= jobs:
            return True
        if gone():
            raise BenchError(
                f"workers {names} exited with {redis.zcard(finished_key)} of {jobs} jobs finished:\n"
                + "\n".join(child.log_tail() for child in children)
            )
        return False

    wait_for(all_finished, timeout_s=jobs * PER_JOB_TIMEOUT_S + 30, interval_s=POLL_S, message=f"{jobs} jobs")
    done = time.perf_counter()
    for child in children:
        code = child.process.wait(timeout=60)
        if code != 0:
            raise BenchError(f"worker {child.name} exited with code {code}:\n{child.log_tail()}")
    exited = time.perf_counter()
    return DrainRun(drain_s=done - ready, total_s=exited - spawned, cpu_s=children_cpu_s() - cpu_before)


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children and theirs (a worker's horses included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
