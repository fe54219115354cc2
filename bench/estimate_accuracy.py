"""`python -m bench.estimate_accuracy`: how close are the estimated start and finish times?

Starts a private redis-server, a migrated SQLite file and `--workers` real worker processes, runs
a warm-up so every queue has history, then plays scenarios of `--jobs` `demo.sleep` jobs with
random lengths. Each job is estimated (`backend.estimates.estimate`) right after it is submitted;
once all have run, each estimate is compared with the job's actual `started_at`/`finished_at`.

Scenarios:
- `one-queue`: all jobs submitted at once to `normal`. Only the spread of run times is unknown.
- `mixed`: all at once, each to a random queue. A later `high` job overtakes an earlier `low` one,
  which the estimate made at submit time could not know.
- `stream`: jobs arrive one by one (exponential gaps, about 90 % of the workers' capacity), each
  to a random queue: the realistic case.

Prints a table; every job's figures go to `bench/results/estimates.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.durations import DurationStats, Mean
from backend.enums import JobStatus, Priority
from backend.estimates import Estimate, estimate, estimates_for_many
from backend.jobs import submit_job
from backend.models import JobRow
from backend.tasks import registry
from bench.env import BenchEnv, BenchError, wait_for
from bench.lanes import LanesClient
from bench.report import RESULTS_DIR

SCENARIOS = ("one-queue", "mixed", "stream")
QUEUES = [p.value for p in Priority]
UTILISATION = 0.9  # the stream's arrival rate, as a fraction of what the workers can do
WARMUP_JOBS_PER_QUEUE = 15  # enough history that the moving averages are not mostly noise
LATER_FRACTION = 0.3  # "asked later": when this fraction of the scenario's jobs has started
MIN_WAIT_FOR_RATIO_S = 1.0  # shorter actual waits are left out of the relative error


class WithoutHandover(DurationStats):
    """The averages with the hand-over left out: what the estimate would be without that term."""

    def handover(self, session: Session) -> Mean:
        return Mean(None, 0)


WITHOUT_HANDOVER = WithoutHandover()


@dataclass(frozen=True)
class Sample:
    scenario: str
    asked: str  # "at submit", or "later" (re-estimated while it still waited)
    queue: str
    seconds: float  # what the job was asked to sleep
    position: int
    ahead: int
    submitted_at: datetime
    asked_at: datetime
    estimated_start_at: datetime | None
    estimated_finish_at: datetime | None
    estimated_start_without_handover_at: datetime | None  # the same model, hand-over left out
    started_at: datetime
    finished_at: datetime
    worker: str | None
    basis: dict[str, Any]

    @property
    def wait_s(self) -> float:
        return (self.started_at - self.asked_at).total_seconds()

    def start_error_s(self) -> float | None:
        """Estimated minus actual start: positive when the job started earlier than said."""
        if self.estimated_start_at is None:
            return None
        return (self.estimated_start_at - self.started_at).total_seconds()

    def start_error_without_handover_s(self) -> float | None:
        if self.estimated_start_without_handover_at is None:
            return None
        return (self.estimated_start_without_handover_at - self.started_at).total_seconds()

    def finish_error_s(self) -> float | None:
        if self.estimated_finish_at is None:
            return None
        return (self.estimated_finish_at - self.finished_at).total_seconds()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.estimate_accuracy", description=__doc__)
    parser.add_argument("--jobs", type=int, default=30, help="jobs per scenario (default 30)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--min-s", type=float, default=0.2, help="shortest demo.sleep (default 0.2)")
    parser.add_argument("--max-s", type=float, default=2.0, help="longest demo.sleep (default 2.0)")
    parser.add_argument("--rounds", type=int, default=1, help="play every scenario this many times")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "estimates.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    samples: list[Sample] = []
    try:
        with BenchEnv() as env, LanesClient(redis_url=env.redis_url, database_url=env.database_url) as lanes:
            start_workers(env, args.workers)
            say(f"{args.workers} workers ready; warm-up")
            warm = [
                (q, rng.uniform(args.min_s, args.max_s)) for _ in range(WARMUP_JOBS_PER_QUEUE) for q in QUEUES
            ]
            run_scenario(lanes, "warm-up", warm, gaps_s=[0.0] * len(warm))
            mean_s = (args.min_s + args.max_s) / 2
            for name in [n for _ in range(args.rounds) for n in args.only or SCENARIOS]:
                say(f"scenario {name}: {args.jobs} jobs")
                plan = [
                    (
                        "normal" if name == "one-queue" else rng.choice(QUEUES),
                        rng.uniform(args.min_s, args.max_s),
                    )
                    for _ in range(args.jobs)
                ]
                rate = UTILISATION * args.workers / mean_s
                gaps = [rng.expovariate(rate) if name == "stream" else 0.0 for _ in plan]
                samples += run_scenario(lanes, name, plan, gaps_s=gaps)
    except BenchError as exc:
        say(f"failed: {exc}")
        return 1
    print(table(samples))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(s) for s in samples], default=str, indent=1))
    print(f"\nevery job's figures: {args.json}")
    return 0


def start_workers(env: BenchEnv, count: int) -> None:
    redis = env.redis()
    for n in range(1, count + 1):
        name = f"estimate-w{n}"
        child = env.spawn(name, [sys.executable, "-m", "worker", "--name", name], env.child_env())
        wait_for(
            lambda: not child.alive() or redis.hget(f"rq:worker:{name}", "state") == b"idle",  # noqa: B023
            timeout_s=30,
            message=f"worker {name}",
        )
        if not child.alive():
            raise BenchError(f"worker {name} exited:\n{child.log_tail()}")


def run_scenario(
    lanes: LanesClient, name: str, plan: list[tuple[str, float]], *, gaps_s: list[float]
) -> list[Sample]:
    """Submit and estimate each job of `plan` (queue, seconds); estimate the waiting ones again
    later; wait for all to run; compare every estimate with what happened."""
    # (asked, row, seconds, when, (estimate, estimate without the hand-over))
    asked: list[tuple[str, JobRow, float, datetime, tuple[Estimate, Estimate]]] = []
    rows: dict[str, JobRow] = {}
    seconds_of: dict[str, float] = {}
    for (queue, seconds), gap_s in zip(plan, gaps_s, strict=True):
        time.sleep(gap_s)
        with lanes.sessions() as session:
            row = submit_job(
                session=session,
                redis=lanes.redis,
                settings=lanes.settings,
                tasks=registry,
                task="demo.sleep",
                params={"seconds": round(seconds, 3), "steps": 2},
                priority=Priority(queue),
            )
            now = utcnow()
            found = estimate(
                session=session, redis=lanes.redis, job_id=row.id, queue=row.queue, task=row.task, now=now
            )
            plain = estimate(
                session=session, redis=lanes.redis, job_id=row.id, queue=row.queue, task=row.task, now=now,
                stats=WITHOUT_HANDOVER,
            )  # fmt: skip
        rows[row.id], seconds_of[row.id] = row, seconds
        if found is not None and plain is not None:  # else a worker took it before it was asked about
            asked.append(("at submit", row, seconds, now, (found, plain)))

    ids = list(rows)

    def statuses() -> list[JobRow]:
        with lanes.sessions() as session:
            return list(session.scalars(select(JobRow).where(JobRow.id.in_(ids))).all())

    wait_for(
        lambda: sum(r.started_at is not None for r in statuses()) >= LATER_FRACTION * len(ids),
        timeout_s=60 + 5 * sum(s for _, s in plan),
        interval_s=0.05,
        message=f"{name}: a third of the jobs to start",
    )
    with lanes.sessions() as session:
        now = utcnow()
        waiting = list(rows.values())
        later = estimates_for_many(session=session, redis=lanes.redis, jobs=waiting, now=now)
        plain_later = estimates_for_many(
            session=session, redis=lanes.redis, jobs=waiting, now=now, stats=WITHOUT_HANDOVER
        )
    asked += [
        ("later", rows[job_id], seconds_of[job_id], now, (found, plain_later[job_id]))
        for job_id, found in later.items()
        if job_id in plain_later
    ]

    def finished() -> dict[str, JobRow]:
        found = statuses()
        if len(found) == len(ids) and all(r.status == JobStatus.SUCCEEDED.value for r in found):
            return {r.id: r for r in found}
        return {}

    done = wait_for(finished, timeout_s=60 + 5 * sum(s for _, s in plan), interval_s=0.2, message=name)
    samples = []
    for when, row, seconds, asked_at, (found, plain) in asked:
        ran = done[row.id]
        assert ran.started_at is not None and ran.finished_at is not None
        samples.append(
            Sample(
                scenario=name,
                asked=when,
                queue=row.queue,
                seconds=seconds,
                position=found.position,
                ahead=found.ahead,
                submitted_at=row.created_at,
                asked_at=asked_at,
                estimated_start_at=found.estimated_start_at,
                estimated_finish_at=found.estimated_finish_at,
                estimated_start_without_handover_at=plain.estimated_start_at,
                started_at=ran.started_at,
                finished_at=ran.finished_at,
                worker=ran.worker,
                basis=found.basis,
            )
        )
    return samples


COLUMNS = (
    ("scenario, asked", 20), ("jobs", 5), ("wait p50", 9), ("start |err| p50", 16), ("p90", 7),
    ("bias", 7), ("|err|/wait p50", 15), ("p90", 6), ("w/o hand-over", 14), ("finish |err| p50", 17),
    ("p90", 7),
)  # fmt: skip


def table(samples: list[Sample]) -> str:
    """One row per scenario and moment of asking: the errors of the start and finish estimates."""
    lines = ["".join(f"{title:<{width}}" if i == 0 else f"{title:>{width}}" for i, (title, width) in
                     enumerate(COLUMNS))]  # fmt: skip
    lines.append("-" * len(lines[0]))
    for scenario, when in dict.fromkeys((s.scenario, s.asked) for s in samples):
        group = [s for s in samples if (s.scenario, s.asked) == (scenario, when)]
        starts = [e for s in group if (e := s.start_error_s()) is not None]
        finishes = [e for s in group if (e := s.finish_error_s()) is not None]
        long_waits = [s for s in group if s.wait_s >= MIN_WAIT_FOR_RATIO_S]
        ratios = [abs(e) / s.wait_s for s in long_waits if (e := s.start_error_s()) is not None]
        plain = [
            abs(e) / s.wait_s for s in long_waits if (e := s.start_error_without_handover_s()) is not None
        ]
        cells = [
            f"{scenario}, {when}", str(len(group)), f"{statistics.median(s.wait_s for s in group):.2f}s",
            f"{_p(starts, 50):.2f}s", f"{_p(starts, 90):.2f}s", f"{statistics.median(starts):+.2f}s",
            f"{_p(ratios, 50):.0%}", f"{_p(ratios, 90):.0%}", f"{_p(plain, 50):.0%}",
            f"{_p(finishes, 50):.2f}s", f"{_p(finishes, 90):.2f}s",
        ]  # fmt: skip
        lines.append(
            "".join(
                f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}"
                for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
            )
        )
    lines.append(
        "\n|err| = |estimated - actual|; bias = median of (estimated - actual) start, + when the"
        "\nestimate was too late; |err|/wait over the jobs that waited >= "
        f"{MIN_WAIT_FOR_RATIO_S:.0f} s after being asked;"
        "\nw/o hand-over = |err|/wait p50 of the same model with the hand-over term left out"
    )
    return "\n".join(lines)


def _p(values: list[float], pct: int) -> float:
    """The `pct`th percentile of the absolute values (nearest rank); nan when there are none."""
    data = sorted(abs(v) for v in values)
    if not data:
        return float("nan")
    return data[min(len(data) - 1, round(pct / 100 * (len(data) - 1)))]


def say(message: str) -> None:
    print(f"[estimates] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
