"""Redis commands per job: what Lanes asks of Redis to submit and to run one job, beside bare RQ.

Counted from the server's own `INFO commandstats` around each step, on the private redis-server
with nothing else talking to it: submitting N jobs (Lanes' `submit_job()` against
`Queue.enqueue`), then one `--burst` worker running them to the end (start-up and exit included,
spread over the N jobs). Commands sent in one pipeline count one each, so this is Redis's work per
job rather than network round trips.
"""

from __future__ import annotations

import sys
from collections import Counter

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from bench.env import BIN, BenchEnv, BenchError
from bench.lanes import LanesClient
from bench.report import Comparison
from bench.submit import enqueue_bare

BARE_QUEUE = "bench-commands"


def run(env: BenchEnv, jobs: int) -> list[Comparison]:
    notes = {"jobs": jobs}
    submit = Comparison("Redis commands per submit", "commands", notes=dict(notes), better="lower")
    rows = [submit]
    redis = env.redis()
    with LanesClient(redis_url=env.redis_url, database_url=env.database_url) as lanes:
        for mode, bare_class in (("fork", "rq.Worker"), ("simple", "rq.SimpleWorker")):
            label = "forking" if mode == "fork" else "simple"
            work = Comparison(
                f"Redis commands per job run, {label} worker",
                "commands",
                notes={**notes, "mode": mode, "bare": bare_class},
                better="lower",
            )
            env.flush_redis()
            counts = commands(redis)
            lanes.submit(jobs)
            submitted = commands(redis)
            name = f"lanes-commands-{mode}"
            burst(env, name, [sys.executable, "-m", "worker", "--burst", "--mode", mode, "--name", name])
            ran = commands(redis)
            if mode == "fork":
                submit.lanes.append(total(submitted - counts) / jobs)
            work.lanes.append(total(ran - submitted) / jobs)
            work.notes["lanes_top"] = top(ran - submitted)
            env.flush_redis()
            counts = commands(redis)
            enqueue_bare(Queue(BARE_QUEUE, connection=redis, serializer=JSONSerializer), jobs)
            submitted = commands(redis)
            name = f"bare-commands-{mode}"
            bare = [
                str(BIN / "rq"), "worker", "--burst", "--with-scheduler", "--url", env.redis_url,
                "--serializer", "rq.serializers.JSONSerializer", "--worker-class", bare_class,
                "--name", name, BARE_QUEUE,
            ]  # fmt: skip
            burst(env, name, bare)
            ran = commands(redis)
            if mode == "fork":
                submit.bare.append(total(submitted - counts) / jobs)
            work.bare.append(total(ran - submitted) / jobs)
            work.notes["bare_top"] = top(ran - submitted)
            rows.append(work)
    return rows


def burst(env: BenchEnv, name: str, args: list[str]) -> None:
    child = env.spawn(name, args, env.child_env())
    code = child.process.wait(timeout=600)
    if code != 0:
        raise BenchError(f"{child.name} exited with {code}:\n{child.log_tail()}")


def commands(redis: Redis) -> Counter[str]:
    """Calls per command so far, from INFO commandstats (minus the INFO calls themselves)."""
    stats = redis.info("commandstats")
    found = Counter({name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()})
    found.pop("info", None)
    return found


def total(counts: Counter[str]) -> int:
    return sum(counts.values())


def top(counts: Counter[str], n: int = 8) -> dict[str, int]:
    return dict(counts.most_common(n))
