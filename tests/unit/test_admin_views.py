"""What only a platform admin may do with jobs: list one tenant's, and delete an ended job."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient

from backend.enums import Plan, Role
from backend.main import create_app
from tests.conftest import tenant_key

ECHO = {"task": "demo.echo", "params": {}}


@pytest.fixture
def client(make_settings: Any, fake_redis: fakeredis.FakeRedis) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(), redis=fake_redis)) as client:
        yield client


def bearer(database_url: str, name: str, role: Role = Role.ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant_key(database_url, name, role=role, plan=Plan.PRO)}"}


def ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.text
    return {job["id"] for job in response.json()["items"]}


def test_a_platform_admin_lists_one_tenants_jobs_and_nobody_else_can_name_another(
    client: TestClient, database_url: str
) -> None:
    operator, alice, bob = (bearer(database_url, n) for n in ("operator", "alice", "bob"))
    mine = client.post("/api/v1/jobs", json=ECHO, headers=alice).json()["id"]
    theirs = client.post("/api/v1/jobs", json=ECHO, headers=bob).json()["id"]

    assert ids(client.get("/api/v1/jobs", params={"tenant": "alice"}, headers=operator)) == {mine}
    assert ids(client.get("/api/v1/jobs", headers=operator)) == {mine, theirs}
    assert ids(client.get("/api/v1/jobs", params={"tenant": "alice"}, headers=alice)) == {mine}
    for asked, headers in (("bob", alice), ("nobody", operator)):
        refused = client.get("/api/v1/jobs", params={"tenant": asked}, headers=headers)
        assert (refused.status_code, refused.json()["code"]) == (404, "tenant_not_found")


def test_a_platform_admin_deletes_an_ended_job_from_sql_and_redis(
    client: TestClient, database_url: str, fake_redis: fakeredis.FakeRedis
) -> None:
    operator, alice = bearer(database_url, "operator"), bearer(database_url, "alice")
    job = client.post("/api/v1/jobs", json={**ECHO, "delay_s": 3600}, headers=alice).json()["id"]

    too_soon = client.delete(f"/api/v1/jobs/{job}", headers=operator)
    client.post(f"/api/v1/jobs/{job}/cancel", headers=alice)
    by_member = client.delete(f"/api/v1/jobs/{job}", headers=alice)
    deleted = client.delete(f"/api/v1/jobs/{job}", headers=operator)

    assert (too_soon.status_code, too_soon.json()["code"]) == (409, "job_not_finished")
    assert (by_member.status_code, by_member.json()["code"]) == (403, "forbidden")
    assert deleted.status_code == 204
    assert client.get(f"/api/v1/jobs/{job}", headers=operator).status_code == 404
    assert not fake_redis.exists(f"rq:job:{job}")
    assert client.delete(f"/api/v1/jobs/{job}", headers=operator).status_code == 404
