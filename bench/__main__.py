"""`python -m bench [--quick] [--rounds N] [--only NAME ...] [--database postgresql]`: run the
benchmarks, print the table.

Each benchmark runs Lanes and bare RQ on the same private redis-server and prints the medians
and their ratio (Lanes / bare RQ), beside issue 11's floor where it sets one. Lanes' database is
a SQLite file of the run's, or with `--database postgresql` a fresh database on the `--postgres`
server (the scale benchmark measures both databases either way). The same figures,
every round included, go to `bench/results/latest.json`, and as a markdown table for the README to
`bench/results/latest.md`. Ctrl-C or SIGTERM stops every process the run started.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from backend.job_requests import MAX_BATCH_JOBS
from bench import commands, drain, latency, scale, scheduler, submit
from bench.env import BenchEnv, BenchError, say
from bench.report import (
    LATEST_JSON,
    Comparison,
    apply_floors,
    environment,
    environment_line,
    table,
    write_json,
    write_markdown,
)

BENCHMARKS = ("submit", "drain", "latency", "commands", "scheduler", "scale")


@dataclass(frozen=True)
class Sizes:
    rounds: int
    http_jobs: int
    inprocess_jobs: int
    concurrency: int
    warmup_jobs: int
    drain_jobs: int
    latency_samples: int
    schedules: int
    batch_jobs: int
    batch_size: int
    scale_rows: int
    scale_samples: int
    scale_postgres: str | None = scale.DEFAULT_POSTGRES
    #: The PostgreSQL server Lanes' database is made on; None: a SQLite file.
    postgres: str | None = None


FULL = Sizes(
    rounds=3, http_jobs=1000, inprocess_jobs=1000, concurrency=8, warmup_jobs=100, drain_jobs=300,
    latency_samples=100, schedules=1000, batch_jobs=5000, batch_size=100, scale_rows=1_000_000,
    scale_samples=100,
)  # fmt: skip
QUICK = Sizes(
    rounds=1, http_jobs=200, inprocess_jobs=200, concurrency=8, warmup_jobs=20, drain_jobs=60,
    latency_samples=20, schedules=100, batch_jobs=1000, batch_size=100, scale_rows=20_000,
    scale_samples=20,
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Lanes beside bare RQ, as ratios.")
    parser.add_argument("--quick", action="store_true", help="one small round of each (a smoke test)")
    parser.add_argument("--rounds", type=int, help="rounds per benchmark; the median is reported")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--drain-jobs", type=int, help="jobs each worker drains per round")
    parser.add_argument("--submit-jobs", type=int, help="jobs submitted per round")
    parser.add_argument("--concurrency", type=int, help="HTTP requests in flight in the submit benchmark")
    parser.add_argument("--batch-jobs", type=int, help="jobs submitted in batches per round")
    parser.add_argument("--batch-size", type=int, help="jobs per batch request and per bare enqueue_many")
    parser.add_argument("--schedules", type=int, help="schedules due the same second (scheduler benchmark)")
    parser.add_argument(
        "--scale-rows", type=int, help="job rows at the scale benchmark's last step (10k and 100k come first)"
    )
    parser.add_argument("--scale-samples", type=int, help="calls timed per endpoint in the scale benchmark")
    parser.add_argument(
        "--scale-postgres",
        default=scale.DEFAULT_POSTGRES,
        help=f"PostgreSQL server the scale benchmark makes (and drops) its database on; 'none': SQLite only "
        f"(default {scale.DEFAULT_POSTGRES})",
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="Lanes' database in every benchmark but scale: a SQLite file (default) or a fresh "
        "PostgreSQL database on the --postgres server",
    )
    parser.add_argument(
        "--postgres",
        default=scale.DEFAULT_POSTGRES,
        help=f"the PostgreSQL server for --database postgresql (default {scale.DEFAULT_POSTGRES})",
    )
    parser.add_argument(
        "--json", type=Path, default=LATEST_JSON, help=f"where to write (default {LATEST_JSON})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, database)")
    args = parser.parse_args(argv)
    counts = ("rounds", "drain_jobs", "submit_jobs", "concurrency", "schedules", "batch_jobs", "batch_size")
    for name in (*counts, "scale_rows", "scale_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size is not None and args.batch_size > MAX_BATCH_JOBS:
        parser.error(f"--batch-size must be at most {MAX_BATCH_JOBS}, the API's largest batch")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    return Sizes(
        rounds=args.rounds or base.rounds,
        http_jobs=args.submit_jobs or base.http_jobs,
        inprocess_jobs=args.submit_jobs or base.inprocess_jobs,
        concurrency=args.concurrency or base.concurrency,
        warmup_jobs=base.warmup_jobs,
        drain_jobs=args.drain_jobs or base.drain_jobs,
        latency_samples=base.latency_samples,
        schedules=args.schedules or base.schedules,
        batch_jobs=args.batch_jobs or base.batch_jobs,
        batch_size=args.batch_size or base.batch_size,
        scale_rows=args.scale_rows or base.scale_rows,
        scale_samples=args.scale_samples or base.scale_samples,
        scale_postgres=None if args.scale_postgres.lower() == "none" else args.scale_postgres,
        postgres=args.postgres if args.database == "postgresql" else None,
    )


def run(sizes: Sizes, only: list[str], *, keep: bool) -> list[Comparison]:
    rows: list[Comparison] = []
    with BenchEnv(keep=keep, postgres_url=sizes.postgres) as env:
        database = "PostgreSQL" if sizes.postgres else f"SQLite at {env.database_path}"
        say(f"private redis-server at {env.redis_url}, {database}")
        if "submit" in only:
            say(f"submit: {sizes.rounds} round(s) of {sizes.http_jobs} jobs, {sizes.concurrency} in flight")
            rows += submit.run(
                env,
                submit.SubmitOptions(
                    rounds=sizes.rounds,
                    http_jobs=sizes.http_jobs,
                    inprocess_jobs=sizes.inprocess_jobs,
                    concurrency=sizes.concurrency,
                    warmup_jobs=sizes.warmup_jobs,
                    batch_jobs=sizes.batch_jobs,
                    batch_size=sizes.batch_size,
                ),
            )
        if "drain" in only:
            say(f"drain: {sizes.rounds} round(s) of {sizes.drain_jobs} jobs per worker")
            rows += drain.run(env, drain.DrainOptions(rounds=sizes.rounds, jobs=sizes.drain_jobs))
        if "latency" in only:
            say(f"latency: {sizes.rounds} round(s) of {sizes.latency_samples} jobs, one at a time")
            rows += latency.run(
                env, latency.LatencyOptions(rounds=sizes.rounds, samples=sizes.latency_samples)
            )
        if "commands" in only:
            say(f"commands: Redis commands per job, {sizes.drain_jobs} jobs, counted once")
            rows += commands.run(env, sizes.drain_jobs)
        if "scheduler" in only:
            say(f"scheduler: {sizes.rounds} round(s) of 1 and of {sizes.schedules} due the same second")
            rows += scheduler.run(
                env, scheduler.SchedulerOptions(rounds=sizes.rounds, schedules=sizes.schedules)
            )
        if "scale" in only:
            options = scale.ScaleOptions(
                rows=sizes.scale_rows,
                samples=sizes.scale_samples,
                budget_s=SCALE_BUDGET_S,
                postgres_url=sizes.scale_postgres,
            )
            steps = ", ".join(f"{n:,}" for n in options.sizes)
            say(f"scale: {steps} job rows, {sizes.scale_samples} calls per endpoint")
            rows += scale.run(env, options)
    return rows


#: Seconds one endpoint may take in the scale benchmark before it stops at its minimum of calls.
SCALE_BUDGET_S = 10.0


def command_line(argv: list[str] | None) -> str:
    """The command this run was started with, as the markdown table names it."""
    return shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the run as Ctrl-C does, through asyncio's SIGINT handling where it is active."""
    if callable(signal.getsignal(signal.SIGINT)):
        signal.raise_signal(signal.SIGINT)
    else:  # SIGINT is ignored (started in the background by a shell): interrupt directly
        raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    only = args.only or list(BENCHMARKS)
    signal.signal(signal.SIGTERM, _terminate)  # SIGTERM cleans up as Ctrl-C does
    env_info = {**environment(), "database": args.database}
    started = time.monotonic()
    try:
        rows = run(sizes, only, keep=args.keep)
    except KeyboardInterrupt:
        say("interrupted; every process this run started has been stopped")
        return 130
    except BenchError as exc:
        say(f"benchmark failed: {exc}")
        return 1
    elapsed_s = time.monotonic() - started
    apply_floors(rows)
    ratios = [row for row in rows if "target_ms" not in row.notes]
    scaled = [row for row in rows if "target_ms" in row.notes]
    print()
    if ratios:
        print(table(ratios))
        print()
    if scaled:
        print(scale.table(scaled))
        print()
    print(f"environment: {environment_line(env_info)}")
    print(
        "ratio = lanes / bare rq; 1.00x is parity. Rates (jobs/s): higher is better, 0.50x is half "
        "as many. Lags (ms): lower is better, 0.50x is half the delay, 2.00x twice it. "
        f"Median of {sizes.rounds} round(s)."
    )
    if scaled:
        print(scale.FOOTNOTE)
    options = {**sizes.__dict__, "benchmarks": only, "quick": args.quick, "elapsed_s": round(elapsed_s, 1)}
    path = write_json(rows, env=env_info, options=options, path=args.json)
    md = write_markdown(
        rows, env=env_info, command=command_line(argv), rounds=sizes.rounds, path=path.with_suffix(".md")
    )
    print(f"written to {path} and {md} in {elapsed_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
