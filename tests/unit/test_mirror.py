"""The SQL mirror only moves forward, whatever order the writes arrive in."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from rq.exceptions import StopRequested
from rq.timeouts import JobTimeoutException
from sqlalchemy import event
from sqlalchemy.orm import Session

from backend import mirror
from backend.db import make_engine, make_sessionmaker
from backend.enums import STATUS_RANK, TERMINAL_STATUSES, JobStatus
from backend.models import JobRow
from backend.queues import MIRROR_PENDING_KEY, queue_for
from backend.sync import JobMirror
from tests.helpers import job_row


def make_row(session: Session, job_id: str = "j1") -> JobRow:
    row = job_row(id=job_id, attempts=0, max_retries=3, progress=0, webhook_attempts=0)
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


# -- a batch of moves (the write-behind's) --------------------------------------------------------

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
#: Every column a move can write but `updated_at`, which each write stamps with its own clock.
WRITTEN = (
    "status", "attempts", "epoch", "started_at", "worker", "finished_at", "progress", "stage",
    "result", "error", "traceback", "next_retry_at", "cancelled_by",
)  # fmt: skip


def some_move(rng: random.Random, n: int, status: JobStatus, attempt: int, epoch: int) -> mirror.Move:
    at = T0 + timedelta(seconds=n)
    values = {
        JobStatus.STARTED: lambda: mirror.started_values(worker=f"w{n}", started_at=at),
        JobStatus.RETRYING: lambda: mirror.retrying_values(error=f"e{n}", traceback=None, next_retry_at=at),
        JobStatus.SUCCEEDED: lambda: mirror.succeeded_values(result={"n": n}, finished_at=at),
        JobStatus.FAILED: lambda: mirror.failed_values(error=f"e{n}", traceback=f"tb{n}", finished_at=at),
        JobStatus.CANCELLED: lambda: {"cancelled_by": f"c{n}", "finished_at": at, "error": "cancelled"},
    }[status]()
    if rng.random() < 0.3:
        values["progress"] = rng.randint(0, 100)
    return mirror.Move(job_id="j", status=status, attempt=attempt, epoch=epoch, values=values)


def written(session: Session, job_id: str) -> tuple[object, ...]:
    session.expire_all()
    row = session.get(JobRow, job_id)
    assert row is not None
    return tuple(getattr(row, column) for column in WRITTEN)


def test_a_batch_of_moves_leaves_each_row_as_the_moves_one_by_one_do(session: Session) -> None:
    # Random runs of moves, in order and out of it (late, repeated, across attempts and a requeue's
    # epoch): `advance_all` (which folds a job's climbing moves into one UPDATE) against `advance`
    # one move at a time, on two rows that start alike.
    statuses = [
        JobStatus.STARTED,
        JobStatus.RETRYING,
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    ]
    rng = random.Random(11)
    for case in range(150):
        moves = [
            some_move(rng, n, rng.choice(statuses), rng.randint(1, 3), rng.choice([0, 0, 0, 1]))
            for n in range(rng.randint(1, 6))
        ]
        in_order = rng.random() < 0.5
        if in_order:  # each move ahead of the one before, none after a final status of its epoch
            key = lambda m: (m.epoch, m.attempt, STATUS_RANK[m.status])  # noqa: E731
            moves = sorted({key(m): m for m in moves}.values(), key=key)
            moves = [m for i, m in enumerate(moves) if not any(
                e.epoch == m.epoch and e.status in TERMINAL_STATUSES for e in moves[:i]
            )]  # fmt: skip
        one, batch = f"one-{case}", f"batch-{case}"
        make_row(session, one)
        make_row(session, batch)
        for m in moves:
            mirror.advance(
                session, job_id=one, status=m.status, attempt=m.attempt, epoch=m.epoch, values=m.values
            )
        session.commit()
        mirror.advance_all(session, [replace(m, job_id=batch) for m in moves])
        session.commit()

        alone, together = written(session, one), written(session, batch)
        if in_order:
            assert together == alone, moves
        else:  # a late `started` folded onto its attempt's end may also write that start's columns
            skip = {WRITTEN.index("started_at"), WRITTEN.index("worker")}
            assert [v for i, v in enumerate(together) if i not in skip] == [
                v for i, v in enumerate(alone) if i not in skip
            ], moves


def test_a_jobs_start_and_end_in_one_batch_are_one_update(session: Session) -> None:
    ids = [f"job-{n}" for n in range(20)]
    for job_id in ids:
        make_row(session, job_id)
    moves = [
        mirror.Move(job_id, JobStatus.STARTED, 1, values=mirror.started_values(worker="w1", started_at=T0))
        for job_id in ids
    ] + [
        mirror.Move(
            job_id, JobStatus.SUCCEEDED, 1, values=mirror.succeeded_values(result=job_id, finished_at=T0)
        )
        for job_id in ids
    ]
    statements: list[str] = []
    engine = session.get_bind()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        mirror.advance_all(session, moves)
        session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", listener)

    assert [s.split()[0] for s in statements if not s.startswith(("BEGIN", "COMMIT"))] == ["UPDATE"]
    for job_id in ids:
        session.expire_all()
        row = session.get(JobRow, job_id)
        assert row is not None
        assert (row.status, row.worker, row.started_at, row.result, row.progress) == (
            "succeeded", "w1", T0, job_id, 100
        )  # fmt: skip


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


class _SignalledWhileEncoded(dict[str, int]):
    """A job result whose JSON encoding is interrupted, as by a signal arriving just then."""

    def __init__(self, signalled: BaseException) -> None:
        super().__init__(n=1)
        self.signalled = signalled

    def items(self) -> Any:  # json encodes a dict subclass through items()
        raise self.signalled


@pytest.mark.parametrize("signalled", [StopRequested(), JobTimeoutException("over time")])
def test_a_stop_request_arriving_while_sqlalchemy_prepares_a_mirror_write_reaches_rq_as_itself(
    fake_redis: fakeredis.FakeRedis, database_url: str, signalled: BaseException
) -> None:
    # SQLAlchemy wraps what is raised while it prepares parameters in a StatementError; the mirror
    # took that for a failed write, and an idle worker's SIGTERM was lost.
    engine = make_engine(database_url)
    job = queue_for("normal", fake_redis).enqueue_call("demo.echo")
    job_mirror = JobMirror(sessions=make_sessionmaker(engine), redis=fake_redis)

    with pytest.raises(type(signalled)) as raised:
        job_mirror.succeeded(job, attempt=1, result=_SignalledWhileEncoded(signalled))

    assert job_mirror.failures == 0
    assert raised.value.__cause__ is not raised.value  # no cycle for whoever walks the causes
    engine.dispose()


def test_a_failed_mirror_write_is_swallowed_and_noted_for_replay(fake_redis: fakeredis.FakeRedis) -> None:
    job = queue_for("normal", fake_redis).enqueue_call("demo.echo")
    job_mirror = JobMirror(sessions=_Explodes(RuntimeError("database away")), redis=fake_redis)  # type: ignore[arg-type]

    job_mirror.started(job, worker="w1")

    assert fake_redis.smembers(MIRROR_PENDING_KEY) == {job.id.encode()}
    assert job_mirror.failures == 1
