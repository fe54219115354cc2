"""API keys on every route, and tenants that cannot see each other's jobs or schedules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend import tenants
from backend.main import create_app
from tests.conftest import tenant_key

UNAUTHORIZED = {
    "detail": "a valid API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    "code": "unauthorized",
}
OPEN_PATHS = {"/api/v1/health", "/healthz", "/readyz"}


@pytest.fixture
def app_client(make_settings: Any, fake_redis: fakeredis.FakeRedis) -> Iterator[TestClient]:
    """The API with no key of its own: each request brings its caller's."""
    with TestClient(create_app(make_settings(), redis=fake_redis)) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def alice(database_url: str) -> dict[str, str]:
    return bearer(tenant_key(database_url, "alice", role=tenants.Role.MEMBER))


@pytest.fixture
def bob(database_url: str) -> dict[str, str]:
    return bearer(tenant_key(database_url, "bob", role=tenants.Role.ADMIN))


@pytest.fixture
def operator(database_url: str) -> dict[str, str]:
    return bearer(tenant_key(database_url, "operator"))


def concrete(path: str) -> str:
    return path.replace("{job_id}", "abc").replace("{schedule_id}", "abc")


# -- keys ----------------------------------------------------------------------------------------


def test_every_api_route_but_health_answers_401_without_a_key(
    app_client: TestClient, make_settings: Any, fake_redis: fakeredis.FakeRedis
) -> None:
    paths = create_app(make_settings(), redis=fake_redis).openapi()["paths"]
    guarded = [(m.upper(), path) for path, ops in paths.items() for m in ops if path not in OPEN_PATHS]

    assert len(guarded) >= 15
    for method, path in guarded:
        response = app_client.request(method, concrete(path), json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.json() == UNAUTHORIZED
        assert response.headers["www-authenticate"] == "Bearer"
    assert app_client.get("/healthz").status_code == 200
    assert app_client.get("/api/v1/health").status_code in (200, 503)


def test_missing_malformed_unknown_wrong_and_revoked_keys_get_the_same_401(
    app_client: TestClient, alice: dict[str, str], session: Session
) -> None:
    key = alice["Authorization"].removeprefix("Bearer ")
    prefix = key.split("_")[1]
    revoked = tenant_key(str(session.get_bind().url.render_as_string(hide_password=False)), "alice")
    tenants.revoke_key(session=session, prefix=revoked)

    for headers in (
        {},
        {"Authorization": key},  # no scheme
        {"Authorization": f"Basic {key}"},
        bearer("nonsense"),
        bearer(f"lanes_{prefix}_{'A' * 43}"),  # the right prefix, a wrong secret
        bearer(key.replace(prefix, "0" * 12)),
        bearer(revoked),
        {"X-API-Key": revoked},
    ):
        response = app_client.get("/api/v1/jobs", headers=headers)
        assert (response.status_code, response.json()) == (401, UNAUTHORIZED), headers
    assert app_client.get("/api/v1/jobs", headers=alice).status_code == 200
    assert app_client.get("/api/v1/jobs", headers={"X-API-Key": key}).status_code == 200


def test_a_revoked_key_fails_at_once(app_client: TestClient, database_url: str, session: Session) -> None:
    key = tenant_key(database_url, "alice")
    assert app_client.get("/api/v1/tasks", headers=bearer(key)).status_code == 200

    tenants.revoke_key(session=session, prefix=key)

    assert app_client.get("/api/v1/tasks", headers=bearer(key)).status_code == 401


# -- tenants -------------------------------------------------------------------------------------


def submit(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/jobs", json={"task": "demo.echo", **body}, headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def test_another_tenants_job_is_404_on_every_route_that_names_it(
    app_client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    job = submit(app_client, alice, params={"who": "alice"})["id"]

    for method, path in (
        ("GET", f"/api/v1/jobs/{job}"),
        ("POST", f"/api/v1/jobs/{job}/cancel"),
        ("POST", f"/api/v1/jobs/{job}/retry"),
    ):
        response = app_client.request(method, path, headers=bob)
        assert (response.status_code, response.json()["code"]) == (404, "job_not_found"), (method, path)
    bulk_cancel = app_client.post("/api/v1/jobs/cancel", json={"ids": [job]}, headers=bob).json()
    assert bulk_cancel["cancelled"] == [] and bulk_cancel["not_cancelled"] == [
        {"id": job, "reason": "not found", "status": None}
    ]
    by_filter = app_client.post("/api/v1/jobs/cancel", json={"status": "queued"}, headers=bob).json()
    assert by_filter["cancelled"] == []
    bulk_retry = app_client.post("/api/v1/jobs/retry", json={"ids": [job]}, headers=bob).json()
    assert bulk_retry["not_requeued"] == [{"id": job, "reason": "not found", "status": None}]
    assert app_client.get("/api/v1/jobs", headers=bob).json()["items"] == []
    assert app_client.get("/api/v1/jobs/stats", headers=bob).json()["total"] == 0
    assert app_client.get(f"/api/v1/jobs/{job}", headers=alice).json()["status"] == "queued"  # untouched


def test_each_tenant_lists_and_counts_only_its_own_jobs_and_the_operator_sees_all(
    app_client: TestClient, alice: dict[str, str], bob: dict[str, str], operator: dict[str, str]
) -> None:
    mine = {submit(app_client, alice)["id"] for _ in range(2)}
    theirs = {submit(app_client, bob)["id"]}

    assert {j["id"] for j in app_client.get("/api/v1/jobs", headers=alice).json()["items"]} == mine
    assert {j["id"] for j in app_client.get("/api/v1/jobs", headers=bob).json()["items"]} == theirs
    assert app_client.get("/api/v1/jobs/stats", headers=alice).json()["total"] == 2
    everything = {j["id"] for j in app_client.get("/api/v1/jobs", headers=operator).json()["items"]}
    assert everything == mine | theirs
    assert app_client.get("/api/v1/jobs/stats", headers=operator).json()["total"] == 3
    for job_id in mine | theirs:
        assert app_client.get(f"/api/v1/jobs/{job_id}", headers=operator).status_code == 200


def test_an_admin_of_an_ordinary_tenant_is_no_platform_admin(
    app_client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    job = submit(app_client, alice)["id"]

    assert app_client.get(f"/api/v1/jobs/{job}", headers=bob).status_code == 404  # bob's key is an admin's


def test_a_job_cannot_depend_on_another_tenants_job(
    app_client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    job = submit(app_client, alice)["id"]

    response = app_client.post("/api/v1/jobs", json={"task": "demo.echo", "depends_on": [job]}, headers=bob)

    assert response.status_code == 422, response.text


def test_idempotency_keys_belong_to_their_tenant(
    app_client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    first = app_client.post(
        "/api/v1/jobs", json={"task": "demo.echo"}, headers={**alice, "Idempotency-Key": "k1"}
    )
    other = app_client.post(
        "/api/v1/jobs", json={"task": "demo.echo"}, headers={**bob, "Idempotency-Key": "k1"}
    )
    again = app_client.post(
        "/api/v1/jobs", json={"task": "demo.echo"}, headers={**alice, "Idempotency-Key": "k1"}
    )

    assert (first.status_code, other.status_code, again.status_code) == (202, 202, 202)
    assert other.json()["id"] != first.json()["id"]
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"


def test_another_tenants_schedule_is_404_on_every_route_and_missing_from_the_list(
    app_client: TestClient, alice: dict[str, str], bob: dict[str, str], operator: dict[str, str]
) -> None:
    body = {"name": "nightly", "task": "demo.echo", "cron": "0 3 * * *"}
    created = app_client.post("/api/v1/schedules", json=body, headers=alice)
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule["created_by"].startswith("alice:lanes_")
    sid = schedule["id"]

    for method, path, payload in (
        ("GET", f"/api/v1/schedules/{sid}", None),
        ("PATCH", f"/api/v1/schedules/{sid}", {"enabled": False}),
        ("DELETE", f"/api/v1/schedules/{sid}", None),
        ("POST", f"/api/v1/schedules/{sid}/run", None),
        ("GET", f"/api/v1/schedules/{sid}/jobs", None),
    ):
        response = app_client.request(method, path, json=payload, headers=bob)
        assert (response.status_code, response.json()["code"]) == (404, "schedule_not_found"), (method, path)
    assert app_client.get("/api/v1/schedules", headers=bob).json()["items"] == []
    assert [s["id"] for s in app_client.get("/api/v1/schedules", headers=operator).json()["items"]] == [sid]
    assert app_client.get(f"/api/v1/schedules/{sid}", headers=alice).json()["enabled"] is True

    fired = app_client.post(f"/api/v1/schedules/{sid}/run", headers=alice).json()
    assert app_client.get(f"/api/v1/jobs/{fired['id']}", headers=alice).status_code == 200
    assert app_client.get(f"/api/v1/jobs/{fired['id']}", headers=bob).status_code == 404
