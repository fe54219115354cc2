"""What the reconciler concludes from where RQ holds a job (pure logic, and lookups on fakeredis)."""

from __future__ import annotations

from collections.abc import Callable

import fakeredis
import pytest

from backend.config import Settings
from backend.db import make_engine, make_sessionmaker, utcnow
from backend.models import JobRow
from backend.reconcile import RUN_LOCK_KEY, reconcile
from backend.whereabouts import LPOS_QUEUE_LIMIT, Verdict, Whereabouts, look, verdict


def a_row(status: str = "queued", epoch: int = 0) -> JobRow:
    return JobRow(id="job1", queue="normal", status=status, epoch=epoch, attempts=1)


def where(
    status: str | None,
    *,
    on_queue: bool = False,
    waiting: bool = False,
    running: bool = False,
    unchecked: int = 0,
) -> Whereabouts:
    return Whereabouts(
        status=status, epoch=0, on_queue=on_queue, waiting=waiting, running=running, unchecked=unchecked
    )


@pytest.mark.parametrize(
    ("row_status", "rq", "verdict_"),
    [
        # RQ has it where the row says
        ("queued", where("queued", on_queue=True), Verdict.HELD),
        ("queued", where("queued", unchecked=1), Verdict.HELD),  # a queue too long to search
        ("retrying", where("scheduled", waiting=True), Verdict.HELD),  # waiting out a retry
        ("scheduled", where("scheduled", waiting=True), Verdict.HELD),  # waiting for its run_at
        ("scheduled", where("deferred"), Verdict.HELD),  # released by its dependencies, not its registry
        ("started", where("started", running=True), Verdict.HELD),
        # RQ has moved on and the row missed it
        ("queued", where("finished"), Verdict.LAGGING),
        ("started", where("failed"), Verdict.LAGGING),
        ("retrying", where("canceled"), Verdict.LAGGING),
        ("queued", where("stopped"), Verdict.LAGGING),
        ("queued", where("started", running=True), Verdict.LAGGING),
        ("started", where("scheduled", waiting=True), Verdict.LAGGING),  # a retry the row missed
        # RQ holds it nowhere
        ("queued", where(None), Verdict.LOST),
        ("queued", where("queued"), Verdict.LOST),  # deleted from its list
        ("retrying", where("scheduled"), Verdict.LOST),  # gone from the scheduled registry
        ("started", where(None), Verdict.LOST),
        # RQ says started, and no live worker runs it
        ("started", where("started"), Verdict.ABANDONED),
        ("queued", where("started"), Verdict.ABANDONED),  # claimed by a worker that then died
    ],
)
def test_each_place_rq_may_hold_a_job_gives_one_verdict(
    row_status: str, rq: Whereabouts, verdict_: Verdict
) -> None:
    assert verdict(a_row(row_status), rq) == verdict_


def test_the_record_of_a_run_before_a_requeue_counts_as_lost() -> None:
    finished_earlier = Whereabouts(status="failed", epoch=0, on_queue=False, waiting=False)

    assert verdict(a_row("queued", epoch=1), finished_earlier) == Verdict.LOST
    assert verdict(a_row("queued", epoch=0), finished_earlier) == Verdict.LAGGING


def test_a_queue_too_long_to_search_leaves_its_jobs_unchecked_and_held(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    fake_redis.rpush("rq:queue:normal", *[f"other{n}" for n in range(LPOS_QUEUE_LIMIT)], "job1")
    fake_redis.hset("rq:job:job1", "status", "queued")

    seen = look(fake_redis, [a_row()], now=utcnow())["job1"]

    assert seen.unchecked == 1 and not seen.on_queue
    assert verdict(a_row(), seen) == Verdict.HELD
    fake_redis.lpop("rq:queue:normal")  # now it is within reach
    assert look(fake_redis, [a_row()], now=utcnow())["job1"].on_queue


def test_a_run_finds_another_run_under_way_and_does_nothing(
    fake_redis: fakeredis.FakeRedis, make_settings: Callable[..., Settings], database_url: str
) -> None:
    fake_redis.set(RUN_LOCK_KEY, "another run")
    engine = make_engine(database_url)
    try:
        report = reconcile(sessions=make_sessionmaker(engine), redis=fake_redis, settings=make_settings())
    finally:
        engine.dispose()

    assert report.busy and report.checked == 0 and report.repaired == 0
    assert report.summary() == "another reconcile run is under way; nothing done"
    assert fake_redis.get(RUN_LOCK_KEY) == b"another run"
