"""Where a waiting job stands and when it should start: position, jobs ahead, estimated times."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from redis import Redis
from redis.client import Pipeline
from sqlalchemy import event
from sqlalchemy.orm import Session

from backend import durations, estimates, workload
from backend.durations import DurationStats
from backend.estimates import Estimate, estimate, estimates_for_many, start_offsets
from backend.models import JobRow

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count()


@pytest.fixture
def stats() -> DurationStats:
    """Fresh averages per test: the PostgreSQL database is shared, emptied between tests."""
    return DurationStats()


def add_row(
    session: Session,
    *,
    task: str = "demo.sleep",
    queue: str = "normal",
    status: str = "succeeded",
    run_s: float | None = None,
    created_at: datetime | None = None,
    started_at: datetime | None = None,
    job_id: str | None = None,
    worker: str | None = None,
) -> str:
    """A job row; with `run_s`, one that ran that long and finished before NOW."""
    job_id = job_id or f"row{next(_ids)}"
    created_at = created_at or NOW - timedelta(minutes=30)
    if run_s is not None:
        started_at = created_at + timedelta(seconds=1)
    session.add(
        JobRow(
            id=job_id, task=task, queue=queue, priority=queue, status=status, params={}, attempts=1,
            max_retries=0, progress=0, webhook_attempts=0, epoch=0, created_at=created_at,
            updated_at=created_at, started_at=started_at, worker=worker,
            finished_at=started_at + timedelta(seconds=run_s) if started_at and run_s is not None else None,
        )
    )  # fmt: skip
    session.commit()
    return job_id


def enqueue(redis: Redis, queue: str, *job_ids: str) -> None:
    redis.rpush(f"rq:queue:{queue}", *job_ids)


@dataclass(frozen=True)
class Ref:
    id: str
    queue: str = "normal"
    task: str = "demo.sleep"


def add_worker(
    redis: fakeredis.FakeRedis,
    name: str,
    *,
    queues: str = "high,normal,low",
    running: str | None = None,
    took_it_at: datetime | None = None,
) -> None:
    """A live worker as RQ registers one; `running` is the id of the job it took at `took_it_at`."""
    redis.sadd("rq:workers", f"rq:worker:{name}")
    redis.hset(f"rq:worker:{name}", mapping={"queues": queues, "state": "busy" if running else "idle"})
    if running:
        redis.sadd(f"rq:worker:{name}:executions", f"{running}:exec-{name}")
        if took_it_at:
            redis.hset(f"rq:execution:{running}:exec-{name}", "created_at", took_it_at.timestamp())


def estimate_of(
    session: Session, redis: fakeredis.FakeRedis, stats: DurationStats, job_id: str, queue: str = "normal"
) -> Estimate:
    found = estimate(
        session=session, redis=redis, job_id=job_id, queue=queue, task="demo.sleep", now=NOW, stats=stats
    )
    assert found is not None, f"{job_id} should be waiting in {queue}"
    return found


def seconds_after_now(moment: datetime | None) -> float:
    assert moment is not None, "expected an estimated time"
    return (moment - NOW).total_seconds()


# -- position and jobs ahead ----------------------------------------------------------------------


def test_position_is_one_based_and_counts_the_jobs_ahead_in_the_same_queue(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    enqueue(fake_redis, "normal", "a", "b", "c", "d")

    found = [estimate_of(session, fake_redis, stats, job_id) for job_id in ("a", "b", "c", "d")]

    assert [e.position for e in found] == [1, 2, 3, 4]
    assert [e.ahead for e in found] == [0, 1, 2, 3]


@pytest.mark.parametrize("index", [0, 999, 1000, 1500, 2499, 2500, 3499])
def test_a_job_anywhere_in_a_long_queue_is_found_whether_near_an_end_or_in_the_middle(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats, index: int
) -> None:
    # Redis scans only `SCAN_FROM_EACH_END` entries from each end first; 1000-2499 need a full scan.
    assert workload.SCAN_FROM_EACH_END == 1000
    enqueue(fake_redis, "normal", *[f"j{n}" for n in range(3500)])

    found = estimate_of(session, fake_redis, stats, f"j{index}")

    assert (found.position, found.ahead) == (index + 1, index)


def test_a_page_of_jobs_deep_in_long_queues_is_read_between_two_scans_and_the_strays_by_their_own(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    enqueue(fake_redis, "high", *[f"h{n}" for n in range(5000)])
    enqueue(fake_redis, "normal", *[f"n{n}" for n in range(8000)])
    enqueue(fake_redis, "low", *[f"l{n}" for n in range(3000)])
    asked = [  # as a page of the job list asks: newest first
        ("n5500", "normal"),  # the first deep job of its queue: found by a scan
        ("n5490", "normal"),  # between the two scanned ones: read from the stretch between them
        ("gone", "normal"),  # not in the queue at all
        ("n1500", "normal"),  # out of the queue's order (a requeued job): a scan of its own
        ("n4000", "normal"),  # the last deep job of its queue: found by a scan
        ("h3900", "high"),  # a stretch longer than SPAN_MAX: each found by a scan of its own
        ("h2500", "high"),
        ("h1200", "high"),
        ("l1500", "low"),  # another queue's only deep job
        ("n10", "normal"),  # near the head: found by the first look
    ]

    found = workload.read_workload(fake_redis, asked)

    assert found.indexes == [5500, 5490, None, 1500, 4000, 3900, 2500, 1200, 1500, 10]


@pytest.fixture(params=["fakeredis", "redis-server"])
def any_redis(request: pytest.FixtureRequest) -> Redis:
    """fakeredis, and the tests' own redis-server: the reads that lean on Redis's own list
    commands (`LRANGE` with negative indexes, `LPOS` with `RANK`/`MAXLEN`) are checked on both."""
    return request.getfixturevalue("fake_redis" if request.param == "fakeredis" else "redis")


def test_a_deep_job_in_the_scheduled_registry_is_not_searched_for_in_its_queue(
    any_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue(any_redis, "normal", *[f"n{n}" for n in range(5000)])
    any_redis.zadd("rq:scheduled:normal", {"retry-due": 1.0})  # its wait is over; not moved back yet
    scanned: list[str] = []
    lpos = Pipeline.lpos

    def spy(pipe: Pipeline, name: str, value: str, **kwargs: Any) -> Any:
        scanned.append(value)
        return lpos(pipe, name, value, **kwargs)

    monkeypatch.setattr(Pipeline, "lpos", spy)

    found = workload.read_workload(
        any_redis, [("n3000", "normal"), ("retry-due", "normal"), ("gone", "normal")]
    )

    assert found.indexes == [3000, None, None]
    assert scanned.count("retry-due") == 2  # near each end only; "gone" is also scanned whole
    assert scanned.count("gone") == 3


def test_a_page_of_many_jobs_of_one_queue_is_found_from_its_two_ends_read_whole(any_redis: Redis) -> None:
    assert workload.ENDS_READ_MIN <= 20
    enqueue(any_redis, "normal", *[f"n{n}" for n in range(3500)])
    enqueue(any_redis, "high", *[f"h{n}" for n in range(30)])  # shorter than an end: both reads overlap
    near_tail = [f"n{n}" for n in range(3499, 3484, -1)]
    asked = [(job_id, "normal") for job_id in [*near_tail, "n2600", "n2000", "gone", "n999", "n0"]]
    asked += [(f"h{n}", "high") for n in range(29, -1, -1)]
    asked += [("l1", "low")]  # a queue asked about once: looked up by LPOS, and not there

    found = workload.read_workload(any_redis, asked)

    assert found.indexes == [*range(3499, 3484, -1), 2600, 2000, None, 999, 0, *range(29, -1, -1), None]
    assert found.depths == {"high": 30, "normal": 3500, "low": 0}


def test_every_job_in_a_higher_queue_is_ahead_and_none_in_a_lower_one(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    enqueue(fake_redis, "high", "h1", "h2")
    enqueue(fake_redis, "normal", "n1", "n2", "n3")
    enqueue(fake_redis, "low", "l1", "l2")
    add_worker(fake_redis, "w1")

    n2 = estimate_of(session, fake_redis, stats, "n2")
    l2 = estimate_of(session, fake_redis, stats, "l2", queue="low")
    h1 = estimate_of(session, fake_redis, stats, "h1", queue="high")

    assert (n2.position, n2.ahead, n2.basis["ahead_by_queue"]) == (2, 3, {"high": 2, "normal": 1})
    assert (l2.position, l2.ahead, l2.basis["ahead_by_queue"]) == (2, 6, {"high": 2, "normal": 3, "low": 1})
    assert (h1.position, h1.ahead) == (1, 0)


def test_a_higher_queue_no_serving_worker_drains_is_not_ahead(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    enqueue(fake_redis, "high", "h1", "h2")
    enqueue(fake_redis, "low", "l1")
    add_worker(fake_redis, "low-only", queues="low")
    add_worker(fake_redis, "high-only", queues="high")

    found = estimate_of(session, fake_redis, stats, "l1", queue="low")

    assert found.ahead == 0
    assert found.basis["workers"] == 1


def test_a_job_not_waiting_in_its_queue_has_no_estimate(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    enqueue(fake_redis, "normal", "other")
    add_worker(fake_redis, "w1", running="running-job")

    def of(job_id: str, queue: str = "normal") -> Estimate | None:
        return estimate(
            session=session, redis=fake_redis, job_id=job_id, queue=queue, task="demo.sleep", stats=stats
        )

    assert of("running-job") is None
    assert of("finished-long-ago") is None
    assert of("other", queue="high") is None  # waiting, but not in the queue asked about
    enqueue(fake_redis, "normal", *[f"filler{n}" for n in range(2500)])
    assert of("finished-long-ago") is None  # not near either end of a long queue, nor in between


# -- workers --------------------------------------------------------------------------------------


def test_with_no_live_worker_there_is_no_start_time_and_the_basis_says_why(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    add_row(session, run_s=2.0)
    enqueue(fake_redis, "normal", "a")
    # Dead workers: one stopped (RQ stamps `death`), one whose heartbeat key expired.
    add_worker(fake_redis, "stopped")
    fake_redis.hset("rq:worker:stopped", "death", "2026-03-01T11:00:00Z")
    fake_redis.sadd("rq:workers", "rq:worker:expired")

    found = estimate_of(session, fake_redis, stats, "a")

    assert found.position == 1
    assert found.estimated_start_at is None and found.estimated_finish_at is None
    assert found.basis["workers"] == 0
    assert any("no live worker" in note for note in found.basis["notes"])


def test_idle_workers_take_the_jobs_ahead_at_once_and_the_next_waits_for_the_first_to_free_up(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    add_row(session, run_s=10.0)
    enqueue(fake_redis, "normal", "a", "b", "c", "d", "e")
    add_worker(fake_redis, "w1")
    add_worker(fake_redis, "w2")

    starts = [
        seconds_after_now(estimate_of(session, fake_redis, stats, job_id).estimated_start_at)
        for job_id in ("a", "b", "c", "d", "e")
    ]
    finish = seconds_after_now(estimate_of(session, fake_redis, stats, "e").estimated_finish_at)

    assert starts == pytest.approx([0, 0, 10, 10, 20])
    assert finish == pytest.approx(30)


def test_a_busy_worker_frees_up_when_its_job_should_end(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    add_row(session, run_s=10.0)
    add_row(session, job_id="running", status="queued")  # the row may not say `started` yet
    add_worker(fake_redis, "w1", running="running", took_it_at=NOW - timedelta(seconds=4))
    enqueue(fake_redis, "normal", "a")

    found = estimate_of(session, fake_redis, stats, "a")

    assert seconds_after_now(found.estimated_start_at) == pytest.approx(6)
    assert found.basis["busy"] == 1


@pytest.mark.parametrize(
    ("row_started_s_ago", "expected_free_in_s"),
    [(3.0, 7.0), (None, 5.0)],  # the row's start; with none either, half a mean is left
)
def test_without_rqs_start_time_a_busy_worker_falls_back_to_the_row_then_to_half_a_mean(
    session: Session,
    fake_redis: fakeredis.FakeRedis,
    stats: DurationStats,
    row_started_s_ago: float | None,
    expected_free_in_s: float,
) -> None:
    add_row(session, run_s=10.0)
    started_at = NOW - timedelta(seconds=row_started_s_ago) if row_started_s_ago else None
    add_row(session, job_id="running", status="started", started_at=started_at)
    add_worker(fake_redis, "w1", running="running")
    enqueue(fake_redis, "normal", "a")

    found = estimate_of(session, fake_redis, stats, "a")

    assert seconds_after_now(found.estimated_start_at) == pytest.approx(expected_free_in_s)


def test_a_job_running_past_its_mean_is_expected_to_end_any_moment(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    add_row(session, run_s=10.0)
    add_row(session, job_id="slow", status="started")
    add_worker(fake_redis, "w1", running="slow", took_it_at=NOW - timedelta(seconds=60))
    enqueue(fake_redis, "normal", "a")

    assert seconds_after_now(estimate_of(session, fake_redis, stats, "a").estimated_start_at) == 0


# -- durations ------------------------------------------------------------------------------------


def test_the_task_mean_comes_from_its_most_recent_succeeded_rows_only(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    old = NOW - timedelta(days=1)
    for n in range(10):  # older than the newest 50: out of the window
        add_row(session, run_s=100.0, created_at=old + timedelta(seconds=n))
    for n in range(durations.SAMPLE_SIZE):
        add_row(session, run_s=2.0 if n % 2 else 4.0, created_at=NOW - timedelta(minutes=10, seconds=n))
    add_row(session, run_s=500.0, status="failed")  # not a success
    add_row(session, run_s=500.0, task="demo.echo")  # another task
    enqueue(fake_redis, "normal", "a")
    add_worker(fake_redis, "w1")

    found = estimate_of(session, fake_redis, stats, "a")

    assert found.basis["mean_s"]["task"] == pytest.approx(3.0)
    assert found.basis["samples"]["task"] == durations.SAMPLE_SIZE
    assert found.estimated_start_at == NOW
    assert seconds_after_now(found.estimated_finish_at) == pytest.approx(3.0)


def test_jobs_ahead_are_costed_at_their_queue_mean_not_the_task_mean(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    add_row(session, run_s=30.0)  # demo.sleep in normal
    add_row(session, task="demo.echo", queue="high", run_s=1.0)
    add_row(session, task="demo.echo", queue="high", run_s=3.0)
    enqueue(fake_redis, "high", "h1", "h2", "h3")
    enqueue(fake_redis, "normal", "a")
    add_worker(fake_redis, "w1")

    found = estimate_of(session, fake_redis, stats, "a")

    assert found.basis["mean_s"] == {"task": 30.0, "high": 2.0}
    assert found.basis["samples"] == {"task": 1, "high": 2}
    assert seconds_after_now(found.estimated_start_at) == pytest.approx(6.0)
    assert seconds_after_now(found.estimated_finish_at) == pytest.approx(36.0)


def test_a_task_with_no_history_borrows_its_queue_mean_and_says_so(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    add_row(session, task="demo.echo", run_s=5.0)
    enqueue(fake_redis, "normal", "a")
    add_worker(fake_redis, "w1")

    found = estimate_of(session, fake_redis, stats, "a")

    assert seconds_after_now(found.estimated_finish_at) == pytest.approx(5.0)
    assert found.basis["samples"]["task"] == 0
    assert any("no history for task" in note for note in found.basis["notes"])


def test_with_no_history_at_all_a_job_ahead_makes_the_start_unknown_but_a_free_worker_still_starts_now(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    enqueue(fake_redis, "normal", "a", "b")
    add_worker(fake_redis, "w1")

    first = estimate_of(session, fake_redis, stats, "a")
    second = estimate_of(session, fake_redis, stats, "b")

    assert first.estimated_start_at == NOW and first.estimated_finish_at is None
    assert second.estimated_start_at is None
    assert any("no succeeded jobs" in note for note in second.basis["notes"])


def test_each_job_ahead_also_costs_the_workers_hand_over_learned_from_gaps_between_its_jobs(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats
) -> None:
    # Worker w1 ran four 2 s jobs back to back, 0.1-0.3 s apart, then idled for a minute.
    at = NOW - timedelta(minutes=5)
    for gap_s in (0.0, 0.1, 0.1, 0.3, 60.0):
        at += timedelta(seconds=gap_s)
        add_row(session, run_s=2.0, created_at=at - timedelta(seconds=1), worker="w1")
        at += timedelta(seconds=2)  # add_row starts it 1 s after `created_at`, at `at`; it runs 2 s
    add_row(session, job_id="running", status="started")
    add_worker(fake_redis, "w1", running="running", took_it_at=NOW - timedelta(seconds=0.5))
    enqueue(fake_redis, "normal", "a", "b")

    first, second = (estimate_of(session, fake_redis, stats, job_id) for job_id in ("a", "b"))

    assert stats.handover(session).mean_s == pytest.approx(0.1)
    assert stats.handover(session).samples == 3  # the idle minute is no hand-over
    assert first.basis["handover_s"] == pytest.approx(0.1)
    assert seconds_after_now(first.estimated_start_at) == pytest.approx(1.5 + 0.1)
    assert seconds_after_now(second.estimated_start_at) == pytest.approx(1.5 + 0.1 + 2.0 + 0.1)


def test_averages_are_reused_until_their_time_to_live_runs_out(
    session: Session, fake_redis: fakeredis.FakeRedis
) -> None:
    clock = [0.0]
    stats = DurationStats(ttl_s=5.0, clock=lambda: clock[0])
    add_row(session, run_s=2.0)
    assert stats.task_mean(session, "demo.sleep").mean_s == pytest.approx(2.0)

    add_row(session, run_s=4.0, created_at=NOW - timedelta(minutes=1))
    clock[0] = 4.9
    assert stats.task_mean(session, "demo.sleep").mean_s == pytest.approx(2.0)
    clock[0] = 5.0
    assert stats.task_mean(session, "demo.sleep").mean_s == pytest.approx(3.0)


def test_a_task_with_no_history_is_asked_again_at_once_but_no_hand_over_is_kept_like_any_average(
    session: Session,
) -> None:
    clock = [0.0]
    stats = DurationStats(ttl_s=5.0, clock=lambda: clock[0])
    assert stats.task_mean(session, "demo.sleep").samples == 0
    assert stats.handover(session).samples == 0  # workers that idle between jobs: the usual case

    for offset_s in (0.0, 1.2, 2.4):  # then w1 runs three 1 s jobs, 0.2 s apart
        add_row(session, run_s=1.0, created_at=NOW - timedelta(seconds=10 - offset_s), worker="w1")
    clock[0] = 4.9
    assert stats.task_mean(session, "demo.sleep").samples == 3  # a new task's first runs count at once
    assert stats.handover(session).samples == 0
    clock[0] = 5.0
    assert stats.handover(session).samples == 2


def test_several_tasks_averages_are_read_in_one_statement_and_agree_with_one_at_a_time(
    session: Session,
) -> None:
    for n in range(durations.SAMPLE_SIZE + 5):  # the oldest five are out of the window
        add_row(
            session, run_s=1.0 if n < durations.SAMPLE_SIZE else 9.0, created_at=NOW - timedelta(seconds=n)
        )
    add_row(session, run_s=6.0, task="demo.echo")
    add_row(session, run_s=7.0, task="demo.echo", status="failed")
    statements: list[str] = []
    event.listen(session.get_bind(), "before_cursor_execute", lambda *args: statements.append(args[2]))

    found = DurationStats().task_means(session, ["demo.sleep", "demo.echo", "demo.none", "demo.echo"])

    assert len(statements) == 1
    assert found == {
        task: DurationStats().task_mean(session, task) for task in ("demo.sleep", "demo.echo", "demo.none")
    }
    assert (found["demo.sleep"].mean_s, found["demo.sleep"].samples) == (pytest.approx(1.0), 50)
    assert found["demo.echo"].mean_s == pytest.approx(6.0) and found["demo.none"].samples == 0


# -- many at once ---------------------------------------------------------------------------------


@pytest.fixture
def statements(session: Session) -> Iterator[list[str]]:
    """The SQL statements the session's engine runs during the test."""
    seen: list[str] = []
    engine = session.get_bind().engine

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_a_page_of_two_hundred_waiting_jobs_costs_a_handful_of_queries_and_matches_one_by_one(
    session: Session, fake_redis: fakeredis.FakeRedis, stats: DurationStats, statements: list[str]
) -> None:
    add_row(session, run_s=4.0)
    add_row(session, task="demo.echo", queue="high", run_s=1.0)
    add_row(session, job_id="running", status="started")
    add_worker(fake_redis, "w1", running="running", took_it_at=NOW - timedelta(seconds=1))
    add_worker(fake_redis, "w2")
    add_worker(fake_redis, "w3")
    enqueue(fake_redis, "high", *[f"h{n}" for n in range(50)])
    rows = [Ref(f"n{n}") for n in range(200)]
    enqueue(fake_redis, "normal", *[row.id for row in rows])
    statements.clear()

    many = estimates_for_many(session=session, redis=fake_redis, jobs=rows, now=NOW, stats=stats)

    assert len(statements) <= 5  # running jobs, the task mean, two queue means, the hand-over
    assert list(many) == [row.id for row in rows]
    assert [e.position for e in many.values()] == list(range(1, 201))
    fresh = DurationStats()
    for row in (rows[0], rows[57], rows[199]):
        one = estimate(
            session=session,
            redis=fake_redis,
            job_id=row.id,
            queue="normal",
            task=row.task,
            now=NOW,
            stats=fresh,
        )
        assert one == many[row.id]
    starts = [e.estimated_start_at for e in many.values()]
    assert all(s is not None for s in starts) and starts == sorted(starts)  # type: ignore[type-var]


def test_the_fields_for_the_api_name_every_value_and_are_all_empty_for_a_job_not_waiting() -> None:
    found = Estimate(position=1, ahead=0, estimated_start_at=NOW, estimated_finish_at=None, basis={})

    assert set(found.fields()) == set(estimates.NO_ESTIMATE_FIELDS)
    assert all(value is None for value in estimates.NO_ESTIMATE_FIELDS.values())


# -- the schedule itself --------------------------------------------------------------------------


def exact_start(free_s: list[float], runs: list[tuple[int, float]], n: int) -> float:
    """The start of the job after `n` jobs ahead, played out job by job with no shortcut."""
    heap = list(free_s)
    heapq.heapify(heap)
    durations = [d for count, d in runs for _ in range(count)]
    for d in durations[:n]:
        heapq.heapreplace(heap, heap[0] + d)
    return heap[0]


@pytest.mark.parametrize(
    ("free_s", "runs", "n", "expected"),
    [
        ([0.0], [(3, 2.0)], 3, 6.0),
        ([0.0, 0.0], [(3, 2.0)], 3, 2.0),
        ([5.0, 0.0], [(1, 1.0)], 1, 1.0),  # the idle worker takes the job ahead, then is free first
        ([0.0, 0.0, 0.0], [(2, 9.0)], 2, 0.0),  # a third worker is still free
        ([0.0], [(2, 1.0), (1, 10.0)], 3, 12.0),  # high jobs then normal ones, each at its own mean
        ([0.0], [(1, float("inf"))], 1, float("inf")),  # an unknown duration ahead
        ([0.0, float("inf")], [(1, 3.0)], 0, 0.0),  # a worker with an unknown end does not matter
    ],
)
def test_the_schedule_gives_each_job_to_the_worker_free_first(
    free_s: list[float], runs: list[tuple[int, float]], n: int, expected: float
) -> None:
    assert start_offsets(free_s, runs, [n])[n] == expected
    assert exact_start(free_s, runs, n) == expected


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_whole_rounds_taken_at_once_give_the_job_by_job_schedule(workers: int) -> None:
    free_s = [0.0, *(0.3 * w for w in range(1, workers)), *([float("inf")] if workers == 3 else [])]
    runs = [(7, 0.5), (400, 2.0), (1700, 1.25)]
    targets = [0, 1, 5, 7, 8, 9, 100, 407, 1000, estimates.SIMULATE_MAX_JOBS]

    found = start_offsets(free_s, runs, targets)

    assert found == {n: pytest.approx(exact_start(free_s, runs, n)) for n in targets}


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_past_the_simulated_jobs_the_even_spread_is_within_one_job_of_the_exact_schedule(
    workers: int,
) -> None:
    free_s = [0.7 * w for w in range(workers)]
    runs = [(1500, 0.5), (6000, 2.0)]
    targets = [estimates.SIMULATE_MAX_JOBS + k for k in (1, 777, 5000)]

    found = start_offsets(free_s, runs, targets)

    for n in targets:
        assert abs(found[n] - exact_start(free_s, runs, n)) <= 2.0
