"""The stats of a window: every job that ended in it counted in its bucket, on both databases."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from backend import observe
from backend.models import JobRow
from tests.helpers import job_row

NOW = datetime(2026, 12, 2, 12, 0, 30, 250_000, tzinfo=UTC)


def ended_row(
    *, queue: str, status: str, finished: datetime, run_s: float = 1.0, tenant: str | None = None
) -> JobRow:
    started = finished - timedelta(seconds=run_s)
    return job_row(
        tenant_id=tenant,
        queue=queue,
        status=status,
        created_at=started - timedelta(seconds=2),
        enqueued_at=started - timedelta(seconds=2),
        started_at=started,
        finished_at=finished,
        updated_at=finished,
    )


def test_every_job_that_ended_in_the_window_is_counted_in_its_bucket(session: Session) -> None:
    rng = random.Random(7)
    expected: Counter[tuple[str, str, int]] = Counter()
    window_s, bucket_s = 3600, 300
    since = NOW - timedelta(seconds=window_s)
    for _ in range(400):
        offset = rng.uniform(0, window_s)
        queue, status = rng.choice(["high", "normal", "low"]), rng.choice(["succeeded", "failed"])
        session.add(ended_row(queue=queue, status=status, finished=since + timedelta(seconds=offset)))
        expected[(queue, status, int(offset // bucket_s))] += 1
    # Just inside each edge of a bucket, and of the window.
    for offset in (0, 0.002, bucket_s - 0.002, bucket_s + 0.002, window_s - 0.002):
        session.add(ended_row(queue="normal", status="succeeded", finished=since + timedelta(seconds=offset)))
        expected[("normal", "succeeded", int(offset // bucket_s))] += 1
    # Outside the window, or not ended as succeeded or failed: not counted.
    session.add(ended_row(queue="normal", status="succeeded", finished=NOW))  # the window's last instant
    expected[("normal", "succeeded", window_s // bucket_s - 1)] += 1
    session.add(ended_row(queue="normal", status="succeeded", finished=since - timedelta(seconds=1)))
    session.add(ended_row(queue="normal", status="succeeded", finished=NOW + timedelta(seconds=1)))
    session.add(ended_row(queue="normal", status="cancelled", finished=NOW - timedelta(seconds=5)))
    session.commit()

    stats = observe.queue_stats(session, tenant_id=None, now=NOW, window_s=window_s, bucket_s=bucket_s)

    found: Counter[tuple[str, str, int]] = Counter()
    for queue, numbers in stats["queues"].items():
        assert len(numbers["throughput"]) == window_s // bucket_s
        for index, point in enumerate(numbers["throughput"]):
            assert point["at"] == since + timedelta(seconds=index * bucket_s)
            for status in ("succeeded", "failed"):
                if point[status]:
                    found[(queue, status, index)] = point[status]
        assert numbers["succeeded"] == sum(
            n for (q, s, _), n in expected.items() if (q, s) == (queue, "succeeded")
        )
    assert found == expected
    assert stats["sampled"] == sum(expected.values())


def test_percentiles_rest_on_the_newest_jobs_and_a_tenant_sees_its_own(session: Session) -> None:
    for n in range(20):  # runs of 1..20 s, the newest the longest
        session.add(
            ended_row(
                queue="high", status="succeeded", finished=NOW - timedelta(seconds=100 - n), run_s=n + 1.0
            )
        )
    session.add(ended_row(queue="high", status="failed", finished=NOW - timedelta(seconds=1), run_s=50.0))
    session.add(ended_row(queue="low", status="succeeded", finished=NOW - timedelta(seconds=9), tenant="t-1"))
    session.commit()

    everyone = observe.queue_stats(session, tenant_id=None, now=NOW, window_s=600)
    high = everyone["queues"]["high"]
    assert (high["succeeded"], high["failed"]) == (20, 1)
    assert high["run_s"] == {"p50": 11.0, "p95": 20.0, "count": 21}
    assert high["wait_s"]["p50"] == 2.0

    original = observe.STATS_SAMPLE
    observe.STATS_SAMPLE = 5
    try:
        newest = observe.queue_stats(session, tenant_id=None, now=NOW, window_s=600)
    finally:
        observe.STATS_SAMPLE = original
    assert newest["sampled"] == 5
    assert newest["queues"]["high"]["run_s"]["count"] == 4  # the failed job and the 3 newest successes
    assert newest["queues"]["high"]["run_s"]["p50"] == 19.0
    assert newest["queues"]["high"]["succeeded"] == 20  # counts never sampled

    mine = observe.queue_stats(session, tenant_id="t-1", now=NOW, window_s=600)
    assert mine["sampled"] == 1
    assert (mine["queues"]["high"]["succeeded"], mine["queues"]["low"]["succeeded"]) == (0, 1)


def test_the_sample_is_the_newest_jobs_whatever_their_status(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    for seconds_ago in (10, 20, 30, 40):
        session.add(
            ended_row(queue="high", status="succeeded", finished=NOW - timedelta(seconds=seconds_ago))
        )
    for seconds_ago in (25, 35):  # between the newest successes: the newer of them is in the sample
        session.add(ended_row(queue="low", status="failed", finished=NOW - timedelta(seconds=seconds_ago)))
    session.commit()
    monkeypatch.setattr(observe, "STATS_SAMPLE", 3)

    stats = observe.queue_stats(session, tenant_id=None, now=NOW, window_s=600)

    assert stats["sampled"] == 3
    assert stats["queues"]["high"]["run_s"]["count"] == 2 and stats["queues"]["low"]["run_s"]["count"] == 1
