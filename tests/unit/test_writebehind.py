"""The simple worker's write-behind: batched, in order, nothing lost, failures replayed; metrics
added up before they are sent. And the one-round-trip pop over several queues."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from backend import metrics, mirror
from backend.enums import JobStatus
from backend.models import JobRow
from backend.queues import MIRROR_PENDING_KEY, LanesQueue
from backend.writebehind import WriteBehind
from tests.helpers import wait_for


def add_rows(session: Session, count: int) -> None:
    now = datetime.now(UTC)
    columns: dict[str, Any] = {
        "task": "demo.echo", "queue": "normal", "priority": "normal", "status": "queued", "params": {},
        "attempts": 0, "max_retries": 0, "progress": 0, "webhook_attempts": 0,
        "created_at": now, "updated_at": now,
    }  # fmt: skip
    session.add_all(JobRow(id=f"j{index}", **columns) for index in range(count))
    session.commit()


def advance_to(status: JobStatus, job_id: str) -> Any:
    return lambda s: mirror.advance(s, job_id=job_id, status=status, attempt=1)


@pytest.fixture
def sessions(session: Session) -> sessionmaker[Session]:
    return sessionmaker(session.get_bind(), expire_on_commit=False)


def statuses(session: Session) -> dict[str, str]:
    session.expire_all()
    return {row.id: row.status for row in session.scalars(select(JobRow))}


def test_every_write_handed_over_is_applied_in_order_and_several_share_a_commit(
    session: Session, sessions: sessionmaker[Session], fake_redis: fakeredis.FakeRedis
) -> None:
    add_rows(session, 50)
    behind = WriteBehind(sessions=sessions, redis=fake_redis)
    for index in range(50):  # started, then succeeded: in order, or the forward-only rule drops one
        behind.write(f"j{index}", advance_to(JobStatus.STARTED, f"j{index}"))
        behind.write(f"j{index}", advance_to(JobStatus.SUCCEEDED, f"j{index}"))

    assert behind.flush(timeout_s=10)

    assert set(statuses(session).values()) == {"succeeded"}
    assert behind.writes == 100 and behind.batches < 100
    assert (behind.batches_split, behind.failures) == (0, 0)
    behind.close()


def test_a_callback_after_the_writes_runs_once_they_are_committed_or_at_once_when_none_is_pending(
    session: Session, sessions: sessionmaker[Session], fake_redis: fakeredis.FakeRedis
) -> None:
    # A standing work-horse is told its job's `started` is committed this way, before it writes.
    add_rows(session, 20)
    behind = WriteBehind(sessions=sessions, redis=fake_redis)
    seen: list[set[str]] = []
    for index in range(20):
        behind.write(f"j{index}", advance_to(JobStatus.STARTED, f"j{index}"))

    def look() -> None:  # on the write-behind's thread, with a session of its own as the writes had
        with sessions() as own:
            seen.append(set(own.scalars(select(JobRow.status))))

    behind.after(look)

    wait_for(lambda: bool(seen), timeout_s=10, message="the callback")
    assert seen == [{"started"}]  # every write handed over before it was committed first

    behind.after(lambda: seen.append({"at once"}))  # nothing pending: called here
    assert seen[-1] == {"at once"}
    behind.close()


def test_a_failing_write_is_retried_alone_and_noted_for_replay_while_the_rest_of_its_batch_lands(
    session: Session, sessions: sessionmaker[Session], fake_redis: fakeredis.FakeRedis
) -> None:
    add_rows(session, 3)

    def broken(s: Session) -> None:
        raise RuntimeError("the database said no")

    behind = WriteBehind(sessions=sessions, redis=fake_redis)
    with behind._lock:  # hold the thread so that all three land in one batch
        behind.write("j0", advance_to(JobStatus.STARTED, "j0"))
        behind.write("j1", broken)
        behind.write("j2", advance_to(JobStatus.STARTED, "j2"))
    behind.close()

    assert statuses(session) == {"j0": "started", "j1": "queued", "j2": "started"}
    assert behind.failures == 1
    assert fake_redis.smembers(MIRROR_PENDING_KEY) == {b"j1"}
    assert fake_redis.hget(metrics.COUNTERS_KEY, "lanes_mirror_write_failures|") == b"1"


def test_metrics_are_added_up_and_sent_once_with_one_command_a_field(
    sessions: sessionmaker[Session], fake_redis: fakeredis.FakeRedis
) -> None:
    behind = WriteBehind(sessions=sessions, redis=fake_redis)
    for _ in range(100):
        behind.record(
            [("lanes_jobs_succeeded", {"task": "demo.echo"}, 1)],
            [("lanes_job_run_seconds", {"queue": "normal"}, 0.002)],
        )
    behind.close()  # sends what is left

    counters = {k.decode(): v.decode() for k, v in fake_redis.hgetall(metrics.COUNTERS_KEY).items()}
    assert counters["lanes_jobs_succeeded|task=demo.echo"] == "100"
    assert counters["lanes_job_run_seconds_count|queue=normal"] == "100"
    assert counters["lanes_job_run_seconds_bucket|le=0.005,queue=normal"] == "100"
    assert float(counters["lanes_job_run_seconds_sum|queue=normal"]) == pytest.approx(0.2)


def test_a_tally_sends_one_command_per_field_and_starts_again_empty() -> None:
    sent: list[tuple[str, Any]] = []

    class Pipe:
        def __enter__(self) -> Pipe:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def hincrby(self, key: str, field: str, amount: int) -> None:
            sent.append((field, amount))

        def hincrbyfloat(self, key: str, field: str, amount: float) -> None:
            sent.append((field, amount))

        def execute(self) -> None:
            return None

    class Client:
        def pipeline(self, transaction: bool = True) -> Pipe:
            return Pipe()

    tally = metrics.Tally()
    for _ in range(10):
        tally.count("lanes_jobs_failed", {"task": "t"})
        tally.observe("lanes_job_wait_seconds", {"queue": "low"}, 0.3)
    tally.send(Client())  # type: ignore[arg-type]

    assert len(sent) == 4  # counter, bucket, count, sum: not 40
    assert dict(sent)["lanes_jobs_failed|task=t"] == 10
    assert not tally
    tally.send(Client())  # type: ignore[arg-type]
    assert len(sent) == 4  # nothing to send, nothing sent


def test_a_burst_pass_over_several_queues_takes_the_first_job_of_the_first_queue_that_has_one(
    redis: Redis,
) -> None:
    redis.rpush("rq:queue:normal", "n1", "n2")
    redis.rpush("rq:queue:low", "l1")
    keys = ["rq:queue:high", "rq:queue:webhooks", "rq:queue:normal", "rq:queue:low"]

    assert LanesQueue.lpop(keys, None, connection=redis) == (b"rq:queue:normal", b"n1")
    assert LanesQueue.lpop(keys, None, connection=redis) == (b"rq:queue:normal", b"n2")
    assert LanesQueue.lpop(keys, None, connection=redis) == (b"rq:queue:low", b"l1")
    assert LanesQueue.lpop(keys, None, connection=redis) is None


def test_moves_of_one_shape_share_one_statement_and_a_missing_row_is_still_created(
    session: Session, sessions: sessionmaker[Session], fake_redis: fakeredis.FakeRedis
) -> None:
    add_rows(session, 2)
    create = {"task": "demo.echo", "queue": "normal", "priority": "normal", "params": {}, "max_retries": 0}
    moves = [
        mirror.Move(
            job_id, JobStatus.STARTED, 1, values=mirror.started_values(worker="w"), create=lambda: create
        )
        for job_id in ("j0", "ghost", "j1")
    ]
    behind = WriteBehind(sessions=sessions, redis=fake_redis)
    with behind._lock:  # one batch
        for move in moves:
            behind.write(move.job_id, move)
        behind.write(
            "j0", mirror.Move("j0", JobStatus.SUCCEEDED, 1, values=mirror.succeeded_values(result=1))
        )
        behind.write(
            "j0", mirror.Move("j0", JobStatus.STARTED, 1, values=mirror.started_values(worker="late"))
        )
    behind.close()

    assert statuses(session) == {"j0": "succeeded", "ghost": "started", "j1": "started"}
    assert (behind.batches, behind.batches_split, behind.failures) == (1, 0, 0)
    assert session.get(JobRow, "ghost").worker == "w"  # type: ignore[union-attr]
