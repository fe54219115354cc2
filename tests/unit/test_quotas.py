"""Quotas by plan: credits per UTC day and month, taken atomically, given back when nothing ran.

The API runs on the private redis-server and both databases, with the clock in the test's hands.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend import jobs, quotas, schedules, tenants
from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.enums import JobStatus, Plan, Role
from backend.errors import QuotaExceeded
from backend.firing import fire_due
from backend.job_requests import JobRequest
from backend.main import create_app
from backend.models import JobRow, ScheduleRow, TenantRow
from backend.queues import make_redis
from backend.tasks import registry
from tests.conftest import tenant_key

ECHO = {"task": "demo.echo", "params": {"message": "hi"}}


class Clock:
    """The app's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 12, 2, 23, 59, 30, tzinfo=UTC))


@pytest.fixture
def client(settings: Settings, clock: Clock) -> Iterator[TestClient]:
    """The API with no key of its own: each request brings its tenant's."""
    with TestClient(create_app(settings, clock=clock)) as client:
        yield client


def key_of(database_url: str, name: str, plan: Plan, role: Role = Role.MEMBER) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant_key(database_url, name, role=role, plan=plan)}"}


def set_quota(session: Session, name: str, *, daily: int | None, monthly: int | None) -> None:
    tenant = tenants.get_tenant(session=session, name_or_id=name)
    tenants.change_plan(session=session, tenant=tenant, daily_quota=daily, monthly_quota=monthly)


def rows_of(session: Session, name: str) -> list[JobRow]:
    tenant = tenants.get_tenant(session=session, name_or_id=name)
    session.expire_all()
    return list(session.scalars(select(JobRow).where(JobRow.tenant_id == tenant.id)))


def used(client: TestClient, headers: dict[str, str]) -> tuple[int, int]:
    credits = client.get("/api/v1/credits", headers=headers).json()
    return credits["daily"]["used"], credits["monthly"]["used"]


# -- plans ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "own", "expected"),
    [
        (Plan.FREE, (None, None), (1, 30)),
        (Plan.PRO, (None, None), (10, 100)),
        (Plan.ELITE, (None, None), (20, 500)),
        (Plan.UNLIMITED, (None, None), (None, None)),
        (Plan.FREE, (5, None), (5, 30)),
        (Plan.UNLIMITED, (None, 1000), (None, 1000)),
    ],
)
def test_a_plan_sets_the_quotas_and_a_tenant_may_have_its_own(
    plan: Plan, own: tuple[int | None, int | None], expected: tuple[int | None, int | None]
) -> None:
    tenant = TenantRow(name="acme", plan=plan.value, daily_quota=own[0], monthly_quota=own[1])

    limits = quotas.limits_for(tenant, Settings())

    assert (limits.day, limits.month) == expected


def test_plan_quotas_are_settings() -> None:
    settings = Settings.model_validate({"quota_pro_daily": 3, "quota_pro_monthly": 7})

    limits = quotas.limits_for(TenantRow(name="acme", plan="pro"), settings)

    assert (limits.day, limits.month) == (3, 7)


# -- the API -------------------------------------------------------------------------------------


def test_a_free_tenant_gets_one_job_a_day_then_429_with_its_credits(
    client: TestClient, database_url: str, session: Session
) -> None:
    alice = key_of(database_url, "alice", Plan.FREE)

    first = client.post("/api/v1/jobs", json=ECHO, headers=alice)
    second = client.post("/api/v1/jobs", json=ECHO, headers=alice)

    assert first.status_code == 202, first.text
    assert second.status_code == 429, second.text
    body = second.json()
    assert body["code"] == "quota_exceeded"
    assert "daily quota" in body["detail"] and "alice" in body["detail"]
    assert body["credits"] == {
        "tenant": "alice",
        "plan": "free",
        "daily": {"limit": 1, "used": 1, "remaining": 0, "resets_at": "2026-12-03T00:00:00+00:00"},
        "monthly": {"limit": 30, "used": 1, "remaining": 29, "resets_at": "2027-01-01T00:00:00+00:00"},
    }
    assert second.headers["Retry-After"] == "30"  # the clock says 23:59:30
    assert client.get("/api/v1/credits", headers=alice).json() == body["credits"]
    assert [row.id for row in rows_of(session, "alice")] == [first.json()["id"]]


def test_the_daily_quota_resets_on_the_utc_day_and_the_monthly_one_on_the_utc_month(
    client: TestClient, database_url: str, session: Session, clock: Clock
) -> None:
    bob = key_of(database_url, "bob", Plan.PRO)
    set_quota(session, "bob", daily=2, monthly=3)
    clock.now = datetime(2026, 12, 30, 23, 59, 59, tzinfo=UTC)

    day_one = [client.post("/api/v1/jobs", json=ECHO, headers=bob).status_code for _ in range(3)]
    clock.now = datetime(2026, 12, 31, 0, 0, 0, tzinfo=UTC)
    day_two = [client.post("/api/v1/jobs", json=ECHO, headers=bob) for _ in range(2)]
    clock.now = datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)
    new_month = client.post("/api/v1/jobs", json=ECHO, headers=bob)

    assert day_one == [202, 202, 429]
    assert day_two[0].status_code == 202
    assert day_two[1].status_code == 429 and "monthly quota" in day_two[1].json()["detail"]
    assert day_two[1].json()["credits"]["monthly"]["resets_at"] == "2027-01-01T00:00:00+00:00"
    assert day_two[1].headers["Retry-After"] == str(24 * 3600)
    assert new_month.status_code == 202
    assert used(client, bob) == (1, 1)
    assert len(rows_of(session, "bob")) == 4


def test_refused_submits_take_no_credit(client: TestClient, database_url: str, session: Session) -> None:
    alice = key_of(database_url, "alice", Plan.FREE)
    refused = [
        client.post("/api/v1/jobs", json={"task": "demo.sleep", "params": {"seconds": -1}}, headers=alice),
        client.post("/api/v1/jobs", json={"task": "no.such.task"}, headers=alice),
        client.post("/api/v1/jobs", json={**ECHO, "depends_on": ["missing"]}, headers=alice),
        client.post("/api/v1/jobs/batch", json={"jobs": [ECHO, ECHO]}, headers=alice),
    ]

    assert [r.status_code for r in refused] == [422, 422, 422, 429]
    assert used(client, alice) == (0, 0)
    assert client.post("/api/v1/jobs", json=ECHO, headers=alice).status_code == 202
    assert used(client, alice) == (1, 1)


def test_a_submit_redis_refuses_gives_its_credit_back(
    settings: Settings, database_url: str, session: Session, clock: Clock
) -> None:
    alice = key_of(database_url, "alice", Plan.FREE)
    with TestClient(create_app(settings, redis=make_redis("redis://127.0.0.1:1/0"), clock=clock)) as down:
        response = down.post("/api/v1/jobs", json=ECHO, headers=alice)

        assert response.status_code == 503, response.text
        assert used(down, alice) == (0, 0)
    assert [row.status for row in rows_of(session, "alice")] == ["failed"]


def test_an_idempotent_replay_takes_no_second_credit(client: TestClient, database_url: str) -> None:
    alice = key_of(database_url, "alice", Plan.PRO)
    headers = {**alice, "Idempotency-Key": "nightly-2026-12-02"}

    first = client.post("/api/v1/jobs", json=ECHO, headers=headers)
    again = client.post("/api/v1/jobs", json=ECHO, headers=headers)

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert used(client, alice) == (1, 1)


def test_a_batch_takes_a_credit_a_job_all_or_none(client: TestClient, database_url: str) -> None:
    carol = key_of(database_url, "carol", Plan.PRO)  # 10 a day

    def batch(n: int) -> int:
        return client.post("/api/v1/jobs/batch", json={"jobs": [ECHO] * n}, headers=carol).status_code

    assert batch(11) == 429 and used(client, carol) == (0, 0)
    assert batch(4) == 202 and used(client, carol) == (4, 4)
    assert batch(7) == 429 and used(client, carol) == (4, 4)
    assert batch(6) == 202 and used(client, carol) == (10, 10)


def test_unlimited_tenants_are_counted_and_never_refused(client: TestClient, database_url: str) -> None:
    ops = key_of(database_url, "ops", Plan.UNLIMITED)

    statuses = {client.post("/api/v1/jobs", json=ECHO, headers=ops).status_code for _ in range(5)}
    credits = client.get("/api/v1/credits", headers=ops).json()

    assert statuses == {202}
    assert credits["daily"] == {
        "limit": None,
        "used": 5,
        "remaining": None,
        "resets_at": "2026-12-03T00:00:00+00:00",
    }


def test_credits_are_the_callers_own_and_admins_may_ask_for_any_tenant(
    client: TestClient, database_url: str
) -> None:
    alice = key_of(database_url, "alice", Plan.FREE)
    bob_admin = key_of(database_url, "bob", Plan.PRO, role=Role.ADMIN)
    operator = key_of(database_url, "operator", Plan.UNLIMITED, role=Role.ADMIN)
    client.post("/api/v1/jobs", json=ECHO, headers=alice)

    assert client.get("/api/v1/credits", params={"tenant": "alice"}, headers=alice).status_code == 200
    for outsider in (alice, bob_admin):  # another tenant is not found, even for its own admin
        response = client.get("/api/v1/credits", params={"tenant": "operator"}, headers=outsider)
        assert (response.status_code, response.json()["code"]) == (404, "tenant_not_found")
    seen = client.get("/api/v1/credits", params={"tenant": "alice"}, headers=operator).json()
    assert (seen["tenant"], seen["daily"]["used"]) == ("alice", 1)

    listed = client.get("/api/v1/tenants", headers=operator)
    assert listed.status_code == 200
    by_name = {t["name"]: t for t in listed.json()}
    assert by_name["alice"]["credits"]["daily"]["used"] == 1 and by_name["bob"]["plan"] == "pro"
    for member in (alice, bob_admin):
        refused = client.get("/api/v1/tenants", headers=member)
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")


def test_a_retry_takes_a_credit_and_waits_for_the_next_day_when_there_is_none(
    client: TestClient, database_url: str, clock: Clock
) -> None:
    alice = key_of(database_url, "alice", Plan.FREE)
    job = client.post("/api/v1/jobs", json={**ECHO, "delay_s": 3600}, headers=alice).json()
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=alice).status_code == 200

    refused = client.post(f"/api/v1/jobs/{job['id']}/retry", headers=alice)
    bulk = client.post("/api/v1/jobs/retry", json={"ids": [job["id"]]}, headers=alice).json()
    clock.now += timedelta(minutes=1)
    retried = client.post(f"/api/v1/jobs/{job['id']}/retry", headers=alice)

    assert (refused.status_code, refused.json()["code"]) == (429, "quota_exceeded")
    assert bulk == {
        "requeued": [],
        "not_requeued": [{"id": job["id"], "reason": "over quota", "status": None}],
    }
    assert retried.status_code == 202 and retried.json()["status"] in ("queued", "scheduled")
    assert used(client, alice) == (1, 2)


def test_running_a_schedule_by_hand_takes_its_tenants_credit(client: TestClient, database_url: str) -> None:
    alice = key_of(database_url, "alice", Plan.FREE)
    schedule = client.post(
        "/api/v1/schedules", json={"name": "nightly", "cron": "0 3 * * *", **ECHO}, headers=alice
    ).json()

    runs = [client.post(f"/api/v1/schedules/{schedule['id']}/run", headers=alice) for _ in range(2)]

    assert [r.status_code for r in runs] == [202, 429]
    assert runs[1].json()["code"] == "quota_exceeded"


# -- racing and firing ---------------------------------------------------------------------------


def test_a_burst_of_parallel_submits_at_the_last_credit_admits_exactly_one(
    settings: Settings, database_url: str, redis: Redis, session: Session
) -> None:
    tenant = tenants.ensure_tenant(session=session, name="alice", plan=Plan.PRO)
    tenants.change_plan(session=session, tenant=tenant, daily_quota=3)
    now = datetime.now(UTC)

    def submit_with(own: Session) -> None:
        request = JobRequest(task="demo.echo", params={})
        jobs.submit(
            session=own,
            redis=redis,
            settings=settings,
            tasks=registry,
            request=request,
            tenant_id=tenant.id,
            now=now,
        )

    for _ in range(2):
        submit_with(session)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def submit() -> None:
        with sessions() as own:
            start.wait()
            try:
                submit_with(own)
                outcomes.append("accepted")
            except QuotaExceeded:
                outcomes.append("over quota")

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()

    assert sorted(outcomes) == ["accepted"] + ["over quota"] * 7
    count = session.scalar(select(func.count()).select_from(JobRow).where(JobRow.tenant_id == tenant.id))
    assert count == 3
    assert quotas.credits(session=session, tenant=tenant, settings=settings, now=now)["daily"]["used"] == 3
    assert redis.llen("rq:queue:normal") == 3


def test_a_schedule_fires_against_its_owners_quota_and_records_the_firings_it_skips(
    settings: Settings, redis: Redis, session: Session
) -> None:
    tenant = tenants.ensure_tenant(session=session, name="alice", plan=Plan.FREE)
    made = [
        schedules.create_schedule(
            session=session,
            redis=redis,
            settings=settings,
            tasks=registry,
            name=f"every minute {n}",
            task="demo.echo",
            cron="* * * * *",
            tenant_id=tenant.id,
        )
        for n in range(3)
    ]
    due = max(row.next_run_at for row in made if row.next_run_at is not None)

    report = fire_due(
        session=session,
        redis=redis,
        settings=settings,
        tasks=registry,
        schedule_ids=[row.id for row in made],
        now=due,
    )

    assert len(report.fired) == 1 and len(report.skipped) == 2
    session.expire_all()
    skipped = [session.get(JobRow, job_id) for job_id in report.skipped]
    for row in skipped:
        assert row is not None and row.status == JobStatus.CANCELLED.value
        assert row.cancelled_by == "quota" and row.error and row.error.startswith("skipped:")
        assert row.schedule_id in {s.id for s in made} and row.tenant_id == tenant.id
    assert redis.lrange("rq:queue:normal", 0, -1) == [report.fired[0].encode()]
    moved = session.scalars(select(ScheduleRow).where(ScheduleRow.id.in_([row.id for row in made])))
    assert all(row.next_run_at is not None and row.next_run_at > due for row in moved)
    credits = quotas.credits(session=session, tenant=tenant, settings=settings, now=due)
    assert credits["daily"]["used"] == 1
