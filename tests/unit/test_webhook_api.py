"""Webhooks through the API: hostile URLs refused at submit, the secret for admins, events emitted once.

The deliveries themselves (real workers, a real receiver) are in tests/integration/test_webhooks.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import update
from sqlalchemy.orm import Session

from backend import schedules, webhooks
from backend.config import Settings
from backend.db import utcnow
from backend.enums import Plan, Role
from backend.firing import fire_due
from backend.main import create_app
from backend.models import JobRow
from backend.tasks import registry
from tests.conftest import tenant_key

ECHO = {"task": "demo.echo", "params": {}}
SCHEDULE = {"name": "nightly", "cron": "0 3 * * *", **ECHO}
PUBLIC = "http://93.184.216.34/hooks/lanes"
HOSTILE = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://localhost:8080/hook", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.10/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://0.0.0.0/", "unspecified"),
    ("ftp://93.184.216.34/", "http and https"),
    ("file:///etc/passwd", "http and https"),
    ("http://user:secret@93.184.216.34/", "credentials"),
]


@pytest.fixture
def client(make_settings: Any, redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(redis_url))) as client:
        yield client


def hooked(body: dict[str, Any], url: str) -> dict[str, Any]:
    return {**body, "webhook_url": url}


def key(database_url: str, name: str, role: Role = Role.ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant_key(database_url, name, role=role, plan=Plan.UNLIMITED)}"}


@pytest.mark.parametrize(("url", "reason"), HOSTILE)
def test_a_hostile_webhook_url_is_refused_at_submit_with_the_reason(
    client: TestClient, database_url: str, url: str, reason: str, session: Session
) -> None:
    alice = key(database_url, "alice")

    one = client.post("/api/v1/jobs", json={**ECHO, "webhook_url": url}, headers=alice)
    batch = client.post(
        "/api/v1/jobs/batch", json={"jobs": [ECHO, {**ECHO, "webhook_url": url}]}, headers=alice
    )
    schedule = client.post(
        "/api/v1/schedules",
        json={"name": "n", "cron": "0 3 * * *", **ECHO, "webhook_url": url},
        headers=alice,
    )

    assert (one.status_code, one.json()["code"]) == (422, "invalid_webhook_url")
    assert reason in one.json()["detail"]
    assert (batch.status_code, batch.json()["detail"]["index"]) == (422, 1)
    assert batch.json()["detail"]["code"] == "invalid_webhook_url"
    assert (schedule.status_code, schedule.json()["code"]) == (422, "invalid_webhook_url")
    assert session.query(JobRow).count() == 0  # nothing half-written


def test_the_allow_list_admits_a_loopback_receiver(
    make_settings: Any, redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, webhook_allow="127.0.0.0/8")
    with TestClient(create_app(settings)) as client:
        job = client.post(
            "/api/v1/jobs",
            json={**ECHO, "webhook_url": "http://127.0.0.1:9/hook"},
            headers=key(database_url, "a"),
        )

    assert job.status_code == 202, job.text
    assert job.json()["webhook_url"] == "http://127.0.0.1:9/hook"
    assert job.json()["webhook_delivered"] is None and job.json()["webhook_attempts"] == 0


def test_a_public_url_is_accepted_and_shown_on_the_job_and_schedule(
    client: TestClient, database_url: str
) -> None:
    alice = key(database_url, "alice")
    url = "http://93.184.216.34/hooks/lanes"

    job = client.post("/api/v1/jobs", json={**ECHO, "webhook_url": url}, headers=alice)
    schedule = client.post(
        "/api/v1/schedules",
        json={"name": "n", "cron": "0 3 * * *", **ECHO, "webhook_url": url},
        headers=alice,
    )
    cleared = client.patch(
        f"/api/v1/schedules/{schedule.json()['id']}", json={"webhook_url": ""}, headers=alice
    )

    assert job.status_code == 202 and job.json()["webhook_url"] == url
    assert schedule.status_code == 201 and schedule.json()["webhook_url"] == url
    assert cleared.status_code == 200 and cleared.json()["webhook_url"] is None


def test_only_an_admin_key_sees_or_rotates_its_tenants_secret(client: TestClient, database_url: str) -> None:
    admin = key(database_url, "alice")
    member = key(database_url, "alice", role=Role.MEMBER)
    other = key(database_url, "bob")

    first = client.get("/api/v1/webhooks/secret", headers=admin).json()
    again = client.get("/api/v1/webhooks/secret", headers=admin).json()
    bobs = client.get("/api/v1/webhooks/secret", headers=other).json()
    rotated = client.post("/api/v1/webhooks/secret/rotate", headers=admin).json()

    assert first["secret"].startswith("whsec_") and first == again and first["previous_valid_until"] is None
    assert bobs["secret"] != first["secret"]
    assert rotated["secret"] != first["secret"] and rotated["previous_valid_until"] is not None
    for path in ("/api/v1/webhooks/secret", "/api/v1/webhooks/secret/rotate"):
        refused = client.request("GET" if path.endswith("secret") else "POST", path, headers=member)
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")


def test_another_tenants_deliveries_are_not_found_and_an_unfinished_job_is_not_redelivered(
    client: TestClient, database_url: str
) -> None:
    alice, bob = key(database_url, "alice"), key(database_url, "bob")
    job = client.post(
        "/api/v1/jobs", json={**ECHO, "webhook_url": "http://93.184.216.34/h"}, headers=alice
    ).json()

    assert client.get(f"/api/v1/jobs/{job['id']}/webhooks", headers=alice).json() == []
    for path in (f"/api/v1/jobs/{job['id']}/webhooks", f"/api/v1/jobs/{job['id']}/webhooks/redeliver"):
        method = "POST" if path.endswith("redeliver") else "GET"
        assert client.request(method, path, headers=bob).status_code == 404
    unfinished = client.post(f"/api/v1/jobs/{job['id']}/webhooks/redeliver", headers=alice)
    assert (unfinished.status_code, unfinished.json()["code"]) == (409, "job_not_finished")


# -- emitting ------------------------------------------------------------------------------------


def ended_job(session: Session, **fields: Any) -> JobRow:
    values: dict[str, Any] = {
        "id": "job1",
        "task": "demo.echo",
        "queue": "normal",
        "priority": "normal",
        "status": "succeeded",
        "params": {},
        "result": {"ok": True},
        "attempts": 1,
        "epoch": 0,
        "max_retries": 0,
        "webhook_url": PUBLIC,
        "webhook_attempts": 0,
        "created_at": utcnow() - timedelta(minutes=5),
        "finished_at": utcnow() - timedelta(minutes=2),
    }
    row = JobRow(**{**values, **fields})
    session.add(row)
    session.commit()
    return row


def test_an_event_is_emitted_once_however_often_it_is_asked_for(
    session: Session, redis: Redis, settings: Settings
) -> None:
    ended_job(session)

    first = webhooks.emit(session=session, redis=redis, settings=settings, job_ids=["job1"])
    second = webhooks.emit(session=session, redis=redis, settings=settings, job_ids=["job1"])
    swept = webhooks.sweep(session=session, redis=redis, settings=settings)

    assert first == ["msg_job1_0_succeeded"] and second == [] and swept == []
    assert redis.llen("rq:queue:webhooks") == 1


def test_the_sweep_emits_what_nothing_emitted_after_the_grace_period(
    session: Session, redis: Redis, settings: Settings
) -> None:
    ended_job(session, id="old")
    ended_job(session, id="fresh")
    session.execute(update(JobRow).where(JobRow.id == "fresh").values(finished_at=utcnow()))
    ended_job(session, id="tried", webhook_delivered=False)
    ended_job(session, id="quiet", webhook_url=None)
    session.commit()

    swept = webhooks.sweep(session=session, redis=redis, settings=settings)

    assert swept == ["msg_old_0_succeeded"]


def test_the_event_body_says_what_ended(session: Session) -> None:
    row = ended_job(session, id="j", schedule_id="s1")
    failed = ended_job(session, id="k", error="boom")
    failed.status = "failed"

    body = webhooks.payload(row, webhooks.WebhookEvent.SUCCEEDED)
    bad = webhooks.payload(failed, webhooks.WebhookEvent.FAILED)

    assert body["id"] == "msg_j_0_succeeded" and body["event"] == "job.succeeded"
    assert body["timestamp"] == row.finished_at.isoformat()
    assert body["data"] | {"created_at": None, "finished_at": None} == {
        "job": "j",
        "task": "demo.echo",
        "status": "succeeded",
        "queue": "normal",
        "attempts": 1,
        "schedule_id": "s1",
        "result": {"ok": True},
        "created_at": None,
        "finished_at": None,
    }
    assert bad["data"]["error"] == "boom" and "result" not in bad["data"]


def test_a_schedules_webhook_url_goes_with_every_job_it_fires(
    session: Session, redis: Redis, make_settings: Any, redis_url: str
) -> None:
    settings: Settings = make_settings(redis_url, webhook_allow="127.0.0.0/8")
    registry.load_modules(settings.task_module_names())
    made = schedules.create_schedule(
        session=session,
        redis=redis,
        settings=settings,
        tasks=registry,
        name="every minute",
        task="demo.echo",
        cron="* * * * *",
        webhook_url="http://127.0.0.1:9/hook",
    )
    assert made.next_run_at is not None

    report = fire_due(
        session=session,
        redis=redis,
        settings=settings,
        tasks=registry,
        schedule_ids=[made.id],
        now=made.next_run_at,
    )

    [fired] = report.fired
    assert session.get(JobRow, fired).webhook_url == "http://127.0.0.1:9/hook"  # type: ignore[union-attr]
