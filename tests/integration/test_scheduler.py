"""The scheduler daemon for real: `python -m scheduler` processes on the private redis-server.

A schedule is made due by setting its SQL `next_run_at` to a past whole second and moving its entry
there (`force_due`): the row decides whether it is due, the entry when a pass looks. Most schedules
here are yearly (`0 0 1 1 *`), so no real fire time comes up while a test runs and every firing a
test sees is one it forced. Where a test needs missed slots it uses `recent_slots`: a cron whose
minutes all lie in the last few minutes, so its next real time is most of an hour away.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq_scheduler import Scheduler
from rq_scheduler.utils import to_unix
from sqlalchemy import Engine, select, update

from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.enums import Priority
from backend.firing import firing_job_id
from backend.models import JobRow, ScheduleRow
from backend.queues import LanesJob
from backend.schedule_entries import ENTRIES_KEY, entry_id, reschedule
from backend.schedules import create_schedule
from backend.tasks import registry
from tests.conftest import FAST_SCHEDULER, empty_postgres
from tests.helpers import SchedulerFactory, SchedulerProcess, WorkerFactory, wait_for
from tests.integration.support import rq_job, stamp, wait_for_status

pytestmark = pytest.mark.integration

#: Fires on 1 January only: between the firings a test forces, no real one comes up.
YEARLY = "0 0 1 1 *"
EVERY_MINUTE = "* * * * *"
MINUTE = timedelta(minutes=1)


# -- reading and moving the records -----------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def create(api: TestClient, *, name: str = "report", cron: str = YEARLY, **fields: Any) -> dict[str, Any]:
    """POST a demo.echo schedule and return it as the API shows it."""
    body = {"name": name, "task": "demo.echo", "cron": cron, **fields}
    response = api.post("/api/v1/schedules", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def schedule(api: TestClient, schedule_id: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/schedules/{schedule_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def seconds_ago(seconds: int) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds)


def force_due(db: Engine, redis: Redis, due: datetime, *schedule_ids: str) -> None:
    """As if `due` had come for the schedules: their rows' next run and their entries' scores."""
    with db.begin() as conn:
        conn.execute(update(ScheduleRow).where(ScheduleRow.id.in_(schedule_ids)).values(next_run_at=due))
    reschedule(redis, dict.fromkeys(schedule_ids, due))


def firings(db: Engine, *schedule_ids: str) -> list[str]:
    """The ids of the jobs rows that schedules fired (those of `schedule_ids`, or all), sorted."""
    query = select(JobRow.id).where(JobRow.schedule_id.is_not(None))
    if schedule_ids:
        query = query.where(JobRow.schedule_id.in_(schedule_ids))
    with db.connect() as conn:
        return sorted(conn.scalars(query))


def wait_for_firings(db: Engine, expected: set[str], timeout_s: float = 15) -> None:
    wait_for(lambda: expected <= set(firings(db)), timeout_s=timeout_s, message=f"{len(expected)} firing(s)")


def queued(redis: Redis, queue: str = "normal") -> list[str]:
    """The job ids on `rq:queue:<queue>`, in order, duplicates kept."""
    return [job_id.decode() for job_id in redis.lrange(f"rq:queue:{queue}", 0, -1)]


def entry_score(redis: Redis, schedule_id: str) -> float | None:
    score: float | None = redis.zscore(ENTRIES_KEY, entry_id(schedule_id))
    return score


def has_template(redis: Redis, schedule_id: str) -> bool:
    return bool(redis.exists(LanesJob.key_for(entry_id(schedule_id))))


def due_of(job_id: str) -> datetime:
    """The due time a firing's job id was derived from."""
    return datetime.strptime(job_id.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def fired_in_logs(*schedulers: SchedulerProcess) -> list[str]:
    """The job ids the schedulers' logs say they fired, sorted, one per log line."""
    return sorted(job_id for s in schedulers for job_id in re.findall(r" fired job (\S+) ", s.log()))


def heartbeat_key(scheduler: SchedulerProcess) -> str:
    return f"{Scheduler.redis_scheduler_namespace_prefix}{scheduler.name}"


def last_sync(redis: Redis, scheduler: SchedulerProcess) -> float:
    raw = redis.hget(heartbeat_key(scheduler), "last_sync_at")
    return float(raw) if raw else 0.0


def wait_for_a_whole_sync(redis: Redis, scheduler: SchedulerProcess) -> None:
    """Wait until `scheduler` has run a sync that began after this call (and the passes around it)."""
    since = time.time()
    first = wait_for(lambda: (stamped := last_sync(redis, scheduler)) > since and stamped, timeout_s=10)
    wait_for(lambda: last_sync(redis, scheduler) > first, timeout_s=10, message="a sync begun after the call")


def recent_slots(now: datetime, ago: range = range(9, 1, -1)) -> tuple[str, list[datetime]]:
    """A cron firing at the minutes 9 to 2 minutes before `now`, every hour, and those times.

    The slots are all past and the next real one is some 50 minutes away, so a test can make every
    slot a missed one without a real fire time coming up while it runs.
    """
    slots = [now.replace(second=0, microsecond=0) - k * MINUTE for k in ago]
    return ",".join(str(minute) for minute in sorted(s.minute for s in slots)) + " * * * *", slots


def health(api: TestClient) -> dict[str, Any]:
    response = api.get("/api/v1/health")
    assert response.status_code in (200, 503), response.text
    body: dict[str, Any] = response.json()
    return body


# -- firing exactly once ----------------------------------------------------------------------------


def test_two_schedulers_fire_each_of_twenty_due_schedules_exactly_once_a_round(
    live_api: TestClient, redis: Redis, db: Engine, schedulers: SchedulerFactory
) -> None:
    priorities = list(Priority)
    ids = [
        create(live_api, name=f"report {i}", params={"i": i}, priority=priorities[i % 3])["id"]
        for i in range(20)
    ]
    pair = [schedulers.start(), schedulers.start()]
    dues = [seconds_ago(60) + timedelta(seconds=n) for n in range(3)]

    for due in dues:
        forced_at = datetime.now(UTC)
        force_due(db, redis, due, *ids)
        wait_for_firings(db, {firing_job_id(sid, due) for sid in ids})
        # The round is over once every entry has moved on to the schedule's next time.
        wait_for(
            lambda: all((entry_score(redis, sid) or 0) > time.time() for sid in ids),
            message="every entry to move on",
        )
    for scheduler in pair:
        scheduler.signal()
    assert [scheduler.wait(10) for scheduler in pair] == [0, 0]

    expected = sorted(firing_job_id(sid, due) for sid in ids for due in dues)
    assert firings(db) == expected  # one row per schedule and round, and no other
    with db.connect() as conn:
        rows = conn.execute(select(JobRow.id, JobRow.schedule_id, JobRow.status, JobRow.queue, JobRow.params))
        by_id = {row.id: row for row in rows}
    for i, sid in enumerate(ids):
        for due in dues:
            row = by_id[firing_job_id(sid, due)]
            assert (row.schedule_id, row.status, row.queue, row.params) == (
                sid,
                "queued",
                priorities[i % 3].value,
                {"i": i},
            )
    for priority in priorities:  # one RQ job per row, on its priority's queue
        assert sorted(queued(redis, priority.value)) == sorted(
            job_id for job_id, row in by_id.items() if row.queue == priority.value
        )
    assert fired_in_logs(*pair) == expected  # each firing made by one of the two processes

    next_year = datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)
    for sid in ids:
        after = schedule(live_api, sid)
        assert forced_at - timedelta(seconds=1) <= stamp(after["last_run_at"]) <= datetime.now(UTC)
        assert stamp(after["next_run_at"]) == next_year
        assert entry_score(redis, sid) == to_unix(next_year)


@pytest.fixture
def both_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """A fresh SQLite file and the session's PostgreSQL database emptied: for one test that uses both."""
    sqlite_path = tmp_path / "minute.db"
    shutil.copy(request.getfixturevalue("sqlite_template"), sqlite_path)
    postgres = empty_postgres(request.getfixturevalue("postgres_database"))
    yield [f"sqlite:///{sqlite_path}", postgres]


@pytest.mark.slow
def test_an_every_minute_schedule_under_two_schedulers_fires_once_a_minute_on_the_minute(
    both_databases: list[str], redis_url: str, tmp_path: Path
) -> None:
    # The real clock, so two minute boundaries: SQLite and PostgreSQL side by side in one wait,
    # each with its own Redis database and its own two schedulers.
    registry.load_modules([])
    # Both schedules are made in the first half of one minute, so both expect the same two firings
    # and the four schedulers have half a minute to start before the first.
    wait_for(lambda: datetime.now(UTC).second < 30, timeout_s=35, interval_s=0.2, message="a minute's start")
    setups = []
    for index, database_url in enumerate(both_databases):
        url = redis_url.rsplit("/", 1)[0] + f"/{index + 1}"
        client = Redis.from_url(url)
        client.flushdb()
        factory = SchedulerFactory(
            redis_url=url, database_url=database_url, log_dir=tmp_path, settings=dict(FAST_SCHEDULER)
        )
        engine = make_engine(database_url)
        settings = Settings.model_validate({"database_url": database_url, "redis_url": url})
        with make_sessionmaker(engine)() as session:
            row = create_schedule(
                session=session,
                redis=client,
                settings=settings,
                tasks=registry,
                name="every minute",
                task="demo.echo",
                cron=EVERY_MINUTE,
            )
            assert row.next_run_at is not None
            minutes = [row.next_run_at, row.next_run_at + MINUTE]
            sid = row.id
        setups.append((client, engine, factory, [], sid, minutes))
    assert setups[0][5] == setups[1][5]
    for index, (_, _, factory, pair, _, _) in enumerate(setups):
        pair.extend([factory.start(name=f"minute-{index}-a"), factory.start(name=f"minute-{index}-b")])
    try:
        for _, engine, _, _, sid, _ in setups:
            wait_for(
                lambda engine=engine, sid=sid: len(firings(engine, sid)) >= 2,
                timeout_s=150,
                interval_s=0.2,
                message="two minutes' firings",
            )
        signalled = datetime.now(UTC)
        for _, _, _, pair, _, _ in setups:
            for scheduler in pair:
                scheduler.signal()
        for client, engine, _, pair, sid, minutes in setups:
            assert [scheduler.wait(10) for scheduler in pair] == [0, 0]
            assert signalled < minutes[1] + MINUTE, "the test looked too late to count the firings"
            expected = [firing_job_id(sid, minute) for minute in minutes]
            assert firings(engine, sid) == sorted(expected)
            assert sorted(queued(client)) == sorted(expected)
            assert fired_in_logs(*pair) == sorted(expected)
            with engine.connect() as conn:
                made = dict(
                    conn.execute(select(JobRow.id, JobRow.created_at).where(JobRow.schedule_id == sid)).all()
                )
            for job_id, minute in zip(expected, minutes, strict=True):
                assert timedelta(0) <= made[job_id] - minute < timedelta(seconds=2)  # on the minute
            assert entry_score(client, sid) == to_unix(minutes[1] + MINUTE)
    finally:
        for client, engine, factory, _, _, _ in setups:
            factory.stop_all()
            engine.dispose()
            client.flushdb()
            client.close()


def test_every_firing_is_a_job_of_its_own_that_a_worker_runs_to_succeeded(
    live_api: TestClient, redis: Redis, db: Engine, schedulers: SchedulerFactory, workers: WorkerFactory
) -> None:
    worker = workers.start()
    schedulers.start()
    sid = create(live_api, name="greeting", params={"greeting": "hello"})["id"]

    job_ids: list[str] = []
    for n in range(3):
        due = seconds_ago(30 - n)
        force_due(db, redis, due, sid)
        job_id = firing_job_id(sid, due)
        wait_for_firings(db, {job_id})
        done = wait_for_status(live_api, job_id, "succeeded", timeout_s=20)
        assert (done["schedule_id"], done["task"], done["worker"], done["attempts"]) == (
            sid,
            "demo.echo",
            worker.name,
            1,
        )
        assert done["result"] == {"greeting": "hello"}
        assert rq_job(redis, job_id).return_value() == {"greeting": "hello"}
        job_ids.append(job_id)

    assert len(set(job_ids)) == 3
    assert firings(db, sid) == sorted(job_ids)
    listed = live_api.get(f"/api/v1/schedules/{sid}/jobs").json()["items"]
    assert [(job["id"], job["status"]) for job in listed] == [
        (job_id, "succeeded") for job_id in reversed(job_ids)
    ]


# -- entries follow the schedules table -------------------------------------------------------------


def test_a_disabled_schedule_loses_its_entry_at_once_and_fires_nothing_until_enabled_again(
    live_api: TestClient, redis: Redis, db: Engine, schedulers: SchedulerFactory
) -> None:
    # One sync at start and none after it: what happens to the entries below is the API's and the
    # firing pass's doing.
    scheduler = schedulers.start(scheduler_sync_s=600)
    wait_for(lambda: last_sync(redis, scheduler), message="the scheduler's first sync")
    sid = create(live_api, name="nightly")["id"]
    assert entry_score(redis, sid) is not None

    off = live_api.patch(f"/api/v1/schedules/{sid}", json={"enabled": False})
    assert off.status_code == 200, off.text
    assert (off.json()["enabled"], off.json()["next_run_at"]) == (False, None)
    assert entry_score(redis, sid) is None
    assert not has_template(redis, sid)

    # A stale entry and a past due time on the disabled row: a pass drops the entry, fires nothing.
    stale = seconds_ago(30)
    with db.begin() as conn:
        conn.execute(update(ScheduleRow).where(ScheduleRow.id == sid).values(next_run_at=stale))
    redis.zadd(ENTRIES_KEY, {entry_id(sid): to_unix(stale)})
    wait_for(lambda: entry_score(redis, sid) is None, message="a pass to drop the disabled schedule's entry")
    assert firings(db) == []
    assert queued(redis) == []
    assert schedule(live_api, sid)["last_run_at"] is None

    on = live_api.patch(f"/api/v1/schedules/{sid}", json={"enabled": True})
    assert on.status_code == 200, on.text
    assert entry_score(redis, sid) == to_unix(stamp(on.json()["next_run_at"]))
    assert has_template(redis, sid)
    due = seconds_ago(20)
    force_due(db, redis, due, sid)
    wait_for_firings(db, {firing_job_id(sid, due)})
    assert firings(db) == [firing_job_id(sid, due)]
    # The row is committed before the job is pushed: the queue may lag the table by a moment.
    wait_for(
        lambda: queued(redis) == [firing_job_id(sid, due)], timeout_s=5, message="the firing on its queue"
    )


def test_a_flushed_redis_is_rebuilt_from_sql_and_a_schedule_due_meanwhile_fires_once(
    live_api: TestClient, redis: Redis, db: Engine, schedulers: SchedulerFactory
) -> None:
    scheduler = schedulers.start()
    cron, slots = recent_slots(datetime.now(UTC))
    yearly = create(live_api, name="yearly")
    july = create(live_api, name="first of july", cron="0 6 1 7 *", priority="high")
    missed = create(live_api, name="missed", cron=cron)["id"]
    wait_for(lambda: health(live_api)["scheduler"]["running"] == 1, message="the scheduler in health")

    redis.flushall()
    with db.begin() as conn:  # while Redis was empty, the row came due eight slots ago
        conn.execute(update(ScheduleRow).where(ScheduleRow.id == missed).values(next_run_at=slots[0]))

    for kept in (yearly, july):
        wait_for(
            lambda kept=kept: (
                entry_score(redis, kept["id"]) == to_unix(stamp(kept["next_run_at"]))
                and has_template(redis, kept["id"])
            ),
            timeout_s=10,
            message=f"the sync to rebuild {kept['name']}'s entry",
        )
    wait_for_firings(db, {firing_job_id(missed, slots[0])}, timeout_s=10)
    wait_for_a_whole_sync(redis, scheduler)

    assert firings(db) == [firing_job_id(missed, slots[0])]  # once, not once per missed slot
    assert queued(redis) == [firing_job_id(missed, slots[0])]
    after = schedule(live_api, missed)
    assert stamp(after["next_run_at"]) == slots[0] + timedelta(hours=1)  # the first time after now
    assert entry_score(redis, missed) == to_unix(slots[0] + timedelta(hours=1))
    assert health(live_api)["scheduler"]["running"] == 1  # its registration came back too


def test_a_firing_missed_while_no_scheduler_ran_fires_once_and_moves_to_the_first_time_after_now(
    live_api: TestClient, redis: Redis, db: Engine, schedulers: SchedulerFactory
) -> None:
    cron, slots = recent_slots(datetime.now(UTC))
    sid = create(live_api, name="missed", cron=cron)["id"]
    force_due(db, redis, slots[0], sid)  # eight slots, 9 to 2 minutes ago, all missed

    pair = [schedulers.start(), schedulers.start()]
    wait_for_firings(db, {firing_job_id(sid, slots[0])})
    wait_for_a_whole_sync(redis, pair[0])

    assert firings(db) == [firing_job_id(sid, slots[0])]
    assert fired_in_logs(*pair) == [firing_job_id(sid, slots[0])]
    after = schedule(live_api, sid)
    last_run = stamp(after["last_run_at"])
    assert slots[-1] < last_run <= datetime.now(UTC)
    assert stamp(after["next_run_at"]) == slots[0] + timedelta(hours=1)
    assert entry_score(redis, sid) == to_unix(slots[0] + timedelta(hours=1))


def test_a_deleted_schedule_loses_its_entry_and_never_fires_but_its_jobs_stay_listed(
    live_api: TestClient, redis: Redis, db: Engine, schedulers: SchedulerFactory
) -> None:
    scheduler = schedulers.start()
    sid = create(live_api, name="doomed")["id"]
    due = seconds_ago(30)
    force_due(db, redis, due, sid)
    earlier = firing_job_id(sid, due)
    wait_for_firings(db, {earlier})

    deleted = live_api.delete(f"/api/v1/schedules/{sid}")
    assert deleted.status_code == 204, deleted.text
    assert entry_score(redis, sid) is None
    assert not has_template(redis, sid)

    # A stale entry left behind (a racing write): dropped by a pass or the sync, nothing fired, and
    # no sync brings it back.
    redis.zadd(ENTRIES_KEY, {entry_id(sid): to_unix(seconds_ago(5))})
    wait_for(lambda: entry_score(redis, sid) is None, message="the scheduler to drop the stale entry")
    wait_for_a_whole_sync(redis, scheduler)
    assert entry_score(redis, sid) is None
    assert firings(db) == [earlier]
    assert queued(redis) == [earlier]

    assert live_api.get(f"/api/v1/schedules/{sid}").status_code == 404
    listed = live_api.get("/api/v1/jobs").json()["items"]
    assert [(job["id"], job["schedule_id"]) for job in listed] == [(earlier, sid)]
    assert live_api.get(f"/api/v1/jobs/{earlier}").json()["schedule_id"] == sid


# -- the daemon itself ------------------------------------------------------------------------------


def test_health_shows_a_running_scheduler_and_its_housekeeping_then_none_after_sigterm(
    live_api: TestClient, redis: Redis, schedulers: SchedulerFactory
) -> None:
    create(live_api, name="needs a scheduler")
    scheduler = schedulers.start(reconcile_interval_s=0.5)

    seen = wait_for(
        lambda: (
            (found := health(live_api)["scheduler"])["running"] == 1
            and found["last_reconcile_at"]
            and found["last_prune_at"]
            and found
        ),
        message="health to show the scheduler and its first reconcile and prune",
    )
    assert seen["last_heartbeat_at"] is not None and seen["last_sync_at"] is not None
    assert seen["last_reconcile"] is not None
    first_reconcile = stamp(seen["last_reconcile_at"])
    wait_for(  # the reconciler runs on its timer, not just once
        lambda: stamp(health(live_api)["scheduler"]["last_reconcile_at"]) > first_reconcile,
        timeout_s=10,
        message="a second reconcile",
    )
    assert not any("no scheduler running" in reason for reason in health(live_api)["reasons"])

    asked = time.monotonic()
    scheduler.signal()
    assert scheduler.wait(timeout_s=10) == 0
    assert time.monotonic() - asked < 5
    after = health(live_api)
    assert after["scheduler"]["running"] == 0
    assert "no scheduler running: 1 enabled schedule(s) will not fire" in after["reasons"]


def nine_in_new_york_after(moment: datetime) -> datetime:
    """The first 09:00 America/New_York after `moment`, in UTC, from zoneinfo alone."""
    new_york = ZoneInfo("America/New_York")
    day = moment.astimezone(new_york).date()
    for offset in range(3):
        nine = datetime.combine(day + timedelta(days=offset), clock_time(9), tzinfo=new_york)
        if nine > moment:
            assert nine.utcoffset() in (timedelta(hours=-4), timedelta(hours=-5))
            utc = nine.astimezone(UTC)
            assert utc.hour == (13 if nine.dst() else 14)
            return utc
    raise AssertionError("no 09:00 in three days")


def test_a_scheduler_in_tokyo_writes_nine_in_new_york_as_13_or_14_utc_by_the_date(
    live_api: TestClient, redis: Redis, db: Engine, schedulers: SchedulerFactory
) -> None:
    scheduler = schedulers.start(env={"TZ": "Asia/Tokyo"})
    assert b"TZ=Asia/Tokyo" in Path(f"/proc/{scheduler.pid}/environ").read_bytes().split(b"\0")
    created = create(
        live_api, name="new york morning", cron="0 9 * * *", timezone="America/New_York", enabled=False
    )
    sid = created["id"]
    assert created["next_run_at"] is None

    # Enabled behind the API's back, so the scheduler's sync is what computes the next run.
    enabled_at = datetime.now(UTC)
    with db.begin() as conn:
        conn.execute(update(ScheduleRow).where(ScheduleRow.id == sid).values(enabled=True))
    expected = nine_in_new_york_after(enabled_at)
    wait_for(lambda: entry_score(redis, sid) is not None, message="the sync to write the entry")
    assert stamp(schedule(live_api, sid)["next_run_at"]) == expected
    assert entry_score(redis, sid) == to_unix(expected)

    # A firing: the scheduler computes the following time itself.
    due = seconds_ago(30)
    force_due(db, redis, due, sid)
    wait_for_firings(db, {firing_job_id(sid, due)})
    wait_for(lambda: (entry_score(redis, sid) or 0) > time.time(), message="the entry to move on")
    after = schedule(live_api, sid)
    following = nine_in_new_york_after(stamp(after["last_run_at"]))
    assert stamp(after["next_run_at"]) == following
    assert entry_score(redis, sid) == to_unix(following)
