"""The SQL mirror only moves forward, whatever order the writes arrive in."""

from __future__ import annotations

from datetime import UTC, datetime

import fakeredis
import pytest
from rq.exceptions import StopRequested
from rq.timeouts import JobTimeoutException
from sqlalchemy.orm import Session

from backend import mirror
from backend.enums import JobStatus
from backend.models import JobRow
from backend.queues import MIRROR_PENDING_KEY, queue_for
from backend.sync import JobMirror


def make_row(session: Session, job_id: str = "j1") -> JobRow:
    now = datetime.now(UTC)
    row = JobRow(
        id=job_id, task="demo.echo", queue="normal", priority="normal", status="queued", params={},
        attempts=0, max_retries=3, progress=0, webhook_attempts=0, created_at=now, updated_at=now,
    )  # fmt: skip
    session.add(row)
    session.commit()
    return row


def status_of(session: Session, job_id: str = "j1") -> tuple[str, int]:
    session.expire_all()
    row = session.get(JobRow, job_id)
    assert row is not None
    return row.status, row.attempts


def move(session: Session, status: JobStatus, attempt: int, **values: object) -> bool:
    moved = mirror.advance(session, job_id="j1", status=status, attempt=attempt, values=values)
    session.commit()
    return moved


def test_a_job_climbs_queued_started_succeeded(session: Session) -> None:
    make_row(session)

    assert move(session, JobStatus.STARTED, 1, worker="w1")
    assert move(session, JobStatus.SUCCEEDED, 1, result={"ok": True}, progress=100)

    assert status_of(session) == ("succeeded", 1)
    assert session.get(JobRow, "j1").result == {"ok": True}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "late",
    [(JobStatus.STARTED, 1), (JobStatus.QUEUED, 1), (JobStatus.RETRYING, 1), (JobStatus.FAILED, 1)],
)
def test_a_late_write_never_moves_a_finished_row_back(session: Session, late: tuple[JobStatus, int]) -> None:
    make_row(session)
    move(session, JobStatus.STARTED, 1)
    move(session, JobStatus.SUCCEEDED, 1)

    assert not move(session, *late)
    assert status_of(session) == ("succeeded", 1)


def test_a_repeated_write_changes_nothing(session: Session) -> None:
    make_row(session)
    assert move(session, JobStatus.STARTED, 1, worker="w1")

    assert not move(session, JobStatus.STARTED, 1, worker="w2")
    assert session.get(JobRow, "j1").worker == "w1"  # type: ignore[union-attr]


def test_a_retry_starts_the_ladder_again_with_the_next_attempt(session: Session) -> None:
    make_row(session)
    move(session, JobStatus.STARTED, 1)
    move(session, JobStatus.RETRYING, 1, error="boom")

    assert not move(session, JobStatus.STARTED, 1)  # a stale start of the failed attempt
    assert move(session, JobStatus.STARTED, 2)
    assert not move(session, JobStatus.RETRYING, 1)  # the first attempt's late failure
    assert status_of(session) == ("started", 2)


def test_a_worker_that_meets_a_job_without_a_row_creates_it(session: Session) -> None:
    created = mirror.advance(
        session,
        job_id="stray",
        status=JobStatus.STARTED,
        attempt=1,
        values=mirror.started_values(worker="w1"),
        create=mirror.row_for_unknown_job(task="demo.echo", queue="high", params={"a": 1}, max_retries=0),
    )
    session.commit()

    assert created
    row = session.get(JobRow, "stray")
    assert row is not None
    assert (row.status, row.task, row.queue, row.priority, row.params) == (
        "started",
        "demo.echo",
        "high",
        "high",
        {"a": 1},
    )


def test_without_create_columns_a_missing_row_stays_missing(session: Session) -> None:
    assert not mirror.advance(session, job_id="ghost", status=JobStatus.STARTED, attempt=1)
    assert session.get(JobRow, "ghost") is None


def test_progress_lands_only_on_the_started_row_of_the_same_attempt(session: Session) -> None:
    make_row(session)
    move(session, JobStatus.STARTED, 2)

    mirror.record_progress(session, job_id="j1", attempt=1, progress=90, stage="stale")
    mirror.record_progress(session, job_id="j1", attempt=2, progress=40, stage="halfway")
    session.commit()
    move(session, JobStatus.SUCCEEDED, 2, progress=100)
    mirror.record_progress(session, job_id="j1", attempt=2, progress=60, stage="late")
    session.commit()

    session.expire_all()
    row = session.get(JobRow, "j1")
    assert row is not None and (row.progress, row.stage) == (100, "halfway")


def test_timestamps_come_back_timezone_aware_in_utc(session: Session) -> None:
    make_row(session)
    move(session, JobStatus.STARTED, 1, started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))

    session.expire_all()
    row = session.get(JobRow, "j1")
    assert row is not None and row.started_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert row.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("traceback", "line"),
    [
        ("Traceback (most recent call last):\n  File x\nValueError: bad\n", "ValueError: bad"),
        ("", "unknown error"),
        (
            "Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); ",
            "Work-horse terminated unexpectedly; waitpid returned 9 (signal 9);",
        ),
    ],
)
def test_the_error_line_is_the_last_line_of_the_traceback(traceback: str, line: str) -> None:
    assert mirror.error_line(traceback) == line


class _Explodes:
    """A session factory whose sessions raise `exc` on first use."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self) -> Session:
        raise self.exc


@pytest.mark.parametrize("signalled", [StopRequested(), JobTimeoutException("over time")])
def test_a_stop_request_or_timeout_arriving_during_a_mirror_write_reaches_rq(
    fake_redis: fakeredis.FakeRedis, signalled: BaseException
) -> None:
    job = queue_for("normal", fake_redis).enqueue_call("demo.echo")
    job_mirror = JobMirror(sessions=_Explodes(signalled), redis=fake_redis)  # type: ignore[arg-type]

    with pytest.raises(type(signalled)):
        job_mirror.started(job, worker="w1")


def test_a_failed_mirror_write_is_swallowed_and_noted_for_replay(fake_redis: fakeredis.FakeRedis) -> None:
    job = queue_for("normal", fake_redis).enqueue_call("demo.echo")
    job_mirror = JobMirror(sessions=_Explodes(RuntimeError("database away")), redis=fake_redis)  # type: ignore[arg-type]

    job_mirror.started(job, worker="w1")

    assert fake_redis.smembers(MIRROR_PENDING_KEY) == {job.id.encode()}
    assert job_mirror.failures == 1
