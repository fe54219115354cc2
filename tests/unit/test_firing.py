"""Firing schedules and keeping their Redis entries in step, on a real redis-server and both databases.

The scheduler processes themselves are in tests/integration/test_scheduler.py; here a pass is
called directly, with the clock in the test's hands.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from rq_scheduler.utils import to_unix
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from backend import firing, schedule_entries, schedules
from backend.config import Settings
from backend.cron import next_fire_times
from backend.db import make_engine, make_sessionmaker, utcnow
from backend.firing import fire_due, firing_job_id
from backend.models import JobRow, ScheduleRow
from backend.queues import LanesJob
from backend.schedule_entries import ENTRIES_KEY, entry_id, sync_entries
from backend.tasks import registry
from scheduler.scheduler import LanesScheduler

#: A due time in the past, on a whole second (cron times are whole minutes; firings keep seconds).
DUE = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def a_schedule(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings, **overrides: Any
) -> ScheduleRow:
    fields: dict[str, Any] = {
        "name": "every minute",
        "task": "demo.echo",
        "params": {"n": 1},
        "cron": "* * * * *",
    }
    with sessions() as session:
        row = schedules.create_schedule(
            session=session, redis=redis, settings=settings, tasks=registry, **(fields | overrides)
        )
        session.expunge(row)
    return row


def make_due(sessions: sessionmaker[Session], redis: Redis, schedule_id: str, due: datetime = DUE) -> None:
    """As if `due` had come: the row's next run and the entry's score are both `due`."""
    with sessions() as session:
        session.execute(update(ScheduleRow).where(ScheduleRow.id == schedule_id).values(next_run_at=due))
        session.commit()
    schedule_entries.reschedule(redis, {schedule_id: due})


def fire(
    sessions: sessionmaker[Session],
    redis: Redis,
    settings: Settings,
    *ids: str,
    now: datetime,
    **options: Any,
) -> Any:
    with sessions() as session:
        return fire_due(
            session=session,
            redis=redis,
            settings=settings,
            tasks=registry,
            schedule_ids=ids,
            now=now,
            **options,
        )


def schedule_row(sessions: sessionmaker[Session], schedule_id: str) -> ScheduleRow | None:
    with sessions() as session:
        return session.get(ScheduleRow, schedule_id)


def fired_rows(sessions: sessionmaker[Session], schedule_id: str) -> list[JobRow]:
    with sessions() as session:
        query = select(JobRow).where(JobRow.schedule_id == schedule_id).order_by(JobRow.created_at)
        return list(session.scalars(query))


def entry_score(redis: Redis, schedule_id: str) -> float | None:
    return redis.zscore(ENTRIES_KEY, entry_id(schedule_id))


# -- firing --------------------------------------------------------------------------------------


def test_a_due_schedule_fires_one_new_job_with_its_own_id_row_and_queue_place(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings, priority="high", max_retries=2)
    make_due(sessions, redis, schedule.id)
    now = DUE + timedelta(seconds=1)

    report = fire(sessions, redis, settings, schedule.id, now=now)

    job_id = firing_job_id(schedule.id, DUE)
    assert job_id == f"sched-{schedule.id}-20261201T093000Z"
    assert report.fired == [job_id]
    [row] = fired_rows(sessions, schedule.id)
    assert (row.id, row.status, row.queue, row.max_retries) == (job_id, "queued", "high", 2)
    assert (row.task, row.params) == ("demo.echo", {"n": 1})
    assert redis.lrange("rq:queue:high", 0, -1) == [job_id.encode()]
    assert LanesJob.fetch(job_id, connection=redis).kwargs == {"n": 1}
    after = schedule_row(sessions, schedule.id)
    assert after is not None
    assert after.last_run_at == now and after.next_run_at == DUE + timedelta(minutes=1)
    assert entry_score(redis, schedule.id) == to_unix(DUE + timedelta(minutes=1))


def test_each_firing_is_a_new_job_so_runs_never_share_an_id(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings)

    for minute in range(3):
        due = DUE + timedelta(minutes=minute)
        make_due(sessions, redis, schedule.id, due)
        fire(sessions, redis, settings, schedule.id, now=due + timedelta(seconds=0.5))

    ids = [row.id for row in fired_rows(sessions, schedule.id)]
    assert ids == [firing_job_id(schedule.id, DUE + timedelta(minutes=m)) for m in range(3)]
    assert redis.llen("rq:queue:normal") == 3


def test_a_second_pass_over_the_same_due_time_fires_nothing_more(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings)
    make_due(sessions, redis, schedule.id)
    fire(sessions, redis, settings, schedule.id, now=DUE)

    # A slow second scheduler that saw the entry due before the first moved it on.
    make_due(sessions, redis, schedule.id)
    report = fire(sessions, redis, settings, schedule.id, now=DUE + timedelta(seconds=2))

    assert report.fired == [] and report.taken == [schedule.id]
    assert len(fired_rows(sessions, schedule.id)) == 1
    assert redis.llen("rq:queue:normal") == 1


def test_schedulers_racing_over_the_same_firings_make_each_job_once(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    ids = [a_schedule(sessions, redis, settings, name=f"s{n}").id for n in range(20)]
    for schedule_id in ids:
        make_due(sessions, redis, schedule_id)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def one_scheduler() -> None:
        try:
            start.wait()
            fire(sessions, redis, settings, *ids, now=DUE + timedelta(seconds=1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_scheduler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(len(fired_rows(sessions, schedule_id)) for schedule_id in ids) == [1] * 20
    assert redis.llen("rq:queue:normal") == 20


def test_a_schedule_missed_for_hours_fires_once_then_at_the_next_time_after_now(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings, cron="*/5 * * * *")
    make_due(sessions, redis, schedule.id, DUE)
    now = DUE + timedelta(hours=3, minutes=2, seconds=7)

    report = fire(sessions, redis, settings, schedule.id, now=now)

    assert report.fired == [firing_job_id(schedule.id, DUE)]
    after = schedule_row(sessions, schedule.id)
    assert after is not None and after.next_run_at == DUE + timedelta(hours=3, minutes=5)
    assert len(fired_rows(sessions, schedule.id)) == 1


def test_an_entry_due_before_its_row_moves_to_the_rows_time_and_fires_nothing(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings)
    assert schedule.next_run_at is not None
    schedule_entries.reschedule(redis, {schedule.id: DUE})  # a stale entry, e.g. after a restore

    report = fire(sessions, redis, settings, schedule.id, now=utcnow())

    assert (report.fired, report.early) == ([], [schedule.id])
    assert entry_score(redis, schedule.id) == to_unix(schedule.next_run_at)
    assert fired_rows(sessions, schedule.id) == []


def test_a_disabled_or_deleted_schedule_fires_nothing_and_loses_its_entry(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    disabled = a_schedule(sessions, redis, settings, name="disabled")
    deleted = a_schedule(sessions, redis, settings, name="deleted")
    for schedule in (disabled, deleted):
        make_due(sessions, redis, schedule.id)
    with sessions() as session:
        # Behind the API's back, so the entries are still there for the pass to find.
        session.execute(update(ScheduleRow).where(ScheduleRow.id == disabled.id).values(enabled=False))
        session.delete(session.get(ScheduleRow, deleted.id))
        session.commit()

    report = fire(sessions, redis, settings, disabled.id, deleted.id, now=DUE + timedelta(seconds=1))

    assert report.fired == [] and sorted(report.gone) == sorted([disabled.id, deleted.id])
    assert entry_score(redis, disabled.id) is None and entry_score(redis, deleted.id) is None
    assert not redis.exists(LanesJob.key_for(entry_id(disabled.id)))
    assert redis.llen("rq:queue:normal") == 0


def test_a_schedule_whose_params_no_longer_validate_records_a_failed_firing_and_moves_on(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings, task="demo.sleep", params={"seconds": 1})
    make_due(sessions, redis, schedule.id)
    with sessions() as session:
        session.execute(
            update(ScheduleRow).where(ScheduleRow.id == schedule.id).values(params={"seconds": "soon"})
        )
        session.commit()

    report = fire(sessions, redis, settings, schedule.id, now=DUE + timedelta(seconds=1))

    assert report.refused == [firing_job_id(schedule.id, DUE)] and report.fired == []
    [row] = fired_rows(sessions, schedule.id)
    assert row.status == "failed" and row.error is not None and "invalid_params" in row.error
    after = schedule_row(sessions, schedule.id)
    assert after is not None and after.next_run_at == DUE + timedelta(minutes=1)
    assert redis.llen("rq:queue:normal") == 0


# -- entries and the sync ------------------------------------------------------------------------


def test_the_api_writes_an_enabled_schedules_entry_at_its_next_run(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings, timezone="America/New_York", cron="0 9 * * *")
    assert schedule.next_run_at is not None

    assert entry_score(redis, schedule.id) == to_unix(schedule.next_run_at)
    template = LanesJob.fetch(entry_id(schedule.id), connection=redis)
    assert (template.func_name, template.kwargs, template.origin) == ("demo.echo", {"n": 1}, "normal")
    assert template.meta["schedule_id"] == schedule.id
    assert template.meta["timezone"] == "America/New_York"


def test_a_sync_rebuilds_every_entry_after_a_flush_and_a_second_sync_changes_nothing(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    kept = [a_schedule(sessions, redis, settings, name=f"s{n}") for n in range(3)]
    redis.flushall()

    with sessions() as session:
        first = sync_entries(session=session, redis=redis, now=utcnow())
    snapshot = _entries_snapshot(redis)
    with sessions() as session:
        second = sync_entries(session=session, redis=redis, now=utcnow())

    assert sorted(first.written) == sorted(s.id for s in kept) and first.removed == []
    assert second.changed == 0
    assert _entries_snapshot(redis) == snapshot
    for schedule in kept:
        assert schedule.next_run_at is not None
        assert entry_score(redis, schedule.id) == to_unix(schedule.next_run_at)


def test_a_sync_removes_orphans_fixes_stale_entries_and_leaves_foreign_ones_alone(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    stale_time = a_schedule(sessions, redis, settings, name="stale time")
    stale_params = a_schedule(sessions, redis, settings, name="stale params")
    orphan = a_schedule(sessions, redis, settings, name="orphan")
    schedule_entries.reschedule(redis, {stale_time.id: DUE})
    with sessions() as session:
        session.execute(update(ScheduleRow).where(ScheduleRow.id == stale_params.id).values(params={"n": 2}))
        session.delete(session.get(ScheduleRow, orphan.id))
        session.commit()
    redis.zadd(ENTRIES_KEY, {"someone-elses-job": 1})

    with sessions() as session:
        report = sync_entries(session=session, redis=redis, now=utcnow())

    assert sorted(report.written) == sorted([stale_time.id, stale_params.id])
    assert report.removed == [orphan.id]
    assert stale_time.next_run_at is not None
    assert entry_score(redis, stale_time.id) == to_unix(stale_time.next_run_at)
    assert LanesJob.fetch(entry_id(stale_params.id), connection=redis).kwargs == {"n": 2}
    assert entry_score(redis, orphan.id) is None
    assert redis.zscore(ENTRIES_KEY, "someone-elses-job") == 1


def _entries_snapshot(redis: Redis) -> tuple[Any, ...]:
    entries = redis.zrange(ENTRIES_KEY, 0, -1, withscores=True)
    hashes = [redis.hgetall(LanesJob.key_for(member.decode())) for member, _ in entries]
    return tuple(entries), tuple(sorted((sorted(h.items()) for h in hashes), key=str))


# -- one pass of the daemon ----------------------------------------------------------------------


def test_a_pass_fires_what_is_due_by_its_clock_and_nothing_else(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    due = a_schedule(sessions, redis, settings, name="due")
    later = a_schedule(sessions, redis, settings, name="later", cron="0 0 1 1 *")
    make_due(sessions, redis, due.id)
    scheduler = LanesScheduler(
        redis=redis, sessions=sessions, settings=settings, tasks=registry, clock=lambda: DUE
    )

    report = scheduler.run_pass()

    assert report.locked and report.synced is not None and report.fired is not None
    assert report.fired.fired == [firing_job_id(due.id, DUE)]
    assert fired_rows(sessions, later.id) == []
    assert not redis.exists(scheduler.scheduler_lock_key)  # released for the other schedulers


def test_a_pass_does_nothing_while_another_scheduler_holds_the_lock(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings)
    make_due(sessions, redis, schedule.id)
    redis.set(LanesScheduler.scheduler_lock_key, "another", ex=30)
    scheduler = LanesScheduler(
        redis=redis, sessions=sessions, settings=settings, tasks=registry, clock=lambda: DUE
    )

    report = scheduler.run_pass()

    assert not report.locked and fired_rows(sessions, schedule.id) == []
    assert redis.get(LanesScheduler.scheduler_lock_key) == b"another"


def test_entries_lanes_did_not_write_still_go_through_rq_schedulers_own_path(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    plain = schedule_entries.rq_scheduler(redis)
    job = plain.enqueue_at(DUE.replace(tzinfo=None), "demo.echo", queue_name="low", note="plain")
    scheduler = LanesScheduler(
        redis=redis, sessions=sessions, settings=settings, tasks=registry, clock=lambda: DUE
    )

    report = scheduler.run_pass()

    assert report.others == 1
    assert redis.lrange("rq:queue:low", 0, -1) == [job.id.encode()]
    assert redis.zscore(ENTRIES_KEY, job.id) is None


def test_fire_times_follow_the_schedules_zone_across_a_daylight_saving_change(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings, cron="0 9 * * *", timezone="America/New_York")
    before_change = datetime(2026, 10, 31, 13, 0, tzinfo=UTC)  # 09:00 EDT
    make_due(sessions, redis, schedule.id, before_change)

    fire(sessions, redis, settings, schedule.id, now=before_change)
    fire(sessions, redis, settings, schedule.id, now=datetime(2026, 11, 1, 14, 0, 30, tzinfo=UTC))

    assert [row.id for row in fired_rows(sessions, schedule.id)] == [
        firing_job_id(schedule.id, before_change),
        firing_job_id(schedule.id, datetime(2026, 11, 1, 14, 0, tzinfo=UTC)),  # 09:00 EST
    ]
    after = schedule_row(sessions, schedule.id)
    assert after is not None
    assert (
        after.next_run_at
        == next_fire_times(
            "0 9 * * *", "America/New_York", after=datetime(2026, 11, 1, 14, 0, 30, tzinfo=UTC), n=1
        )[0]
    )


def test_a_firing_whose_job_exists_already_is_not_made_again_and_the_schedule_still_moves_on(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings)
    make_due(sessions, redis, schedule.id)
    fire(sessions, redis, settings, schedule.id, now=DUE)
    make_due(sessions, redis, schedule.id)  # as if the clock had gone back over a fired due time
    other = a_schedule(sessions, redis, settings, name="other")
    make_due(sessions, redis, other.id)

    report = fire(sessions, redis, settings, schedule.id, other.id, now=DUE + timedelta(seconds=1))

    assert report.taken == [schedule.id] and report.fired == [firing_job_id(other.id, DUE)]
    assert len(fired_rows(sessions, schedule.id)) == 1 and len(fired_rows(sessions, other.id)) == 1
    after = schedule_row(sessions, schedule.id)
    assert after is not None and after.next_run_at == DUE + timedelta(minutes=1)


def test_many_due_schedules_fire_in_chunks_each_committed_and_enqueued_before_the_next(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firing, "FIRE_CHUNK", 2)
    ids = [a_schedule(sessions, redis, settings, name=f"s{n}").id for n in range(5)]
    for schedule_id in ids:
        make_due(sessions, redis, schedule_id)
    seen: list[int] = []

    report = fire(
        sessions,
        redis,
        settings,
        *ids,
        now=DUE,
        between_chunks=lambda: seen.append(redis.llen("rq:queue:normal")),
    )

    assert seen == [2, 4, 5]
    assert sorted(report.fired) == sorted(firing_job_id(schedule_id, DUE) for schedule_id in ids)


def test_a_firing_belongs_to_the_schedules_tenant(
    sessions: sessionmaker[Session], redis: Redis, settings: Settings
) -> None:
    schedule = a_schedule(sessions, redis, settings, tenant_id="t-alice")
    make_due(sessions, redis, schedule.id)

    fire(sessions, redis, settings, schedule.id, now=DUE)

    assert [row.tenant_id for row in fired_rows(sessions, schedule.id)] == ["t-alice"]
