"""Submitting jobs over HTTP: what is written, what is refused, and what happens when a backend is away."""

from __future__ import annotations

import json
import zlib
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend.main import create_app
from backend.models import JobRow
from backend.queues import make_redis


def count_rows(client: TestClient) -> int:
    with client.app.state.lanes.sessions() as session:  # type: ignore[attr-defined]
        return session.scalar(select(func.count()).select_from(JobRow)) or 0


def test_a_submitted_job_is_recorded_as_queued_and_put_on_its_priority_queue(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    response = api.post(
        "/api/v1/jobs", json={"task": "demo.sleep", "params": {"seconds": 2}, "priority": "high"}
    )

    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["queue"] == job["priority"] == "high"
    assert job["params"] == {"seconds": 2, "steps": 10}  # the model's defaults are filled in
    assert job["attempts"] == 0 and job["max_retries"] == 3
    assert job["created_at"].endswith("+00:00")
    assert fake_redis.lrange("rq:queue:high", 0, -1) == [job["id"].encode()]
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_job_data_in_redis_is_json_naming_the_task_never_a_python_path(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    job_id = api.post("/api/v1/jobs", json={"task": "demo.echo", "params": {"a": [1, 2]}}).json()["id"]

    stored = fake_redis.hgetall(f"rq:job:{job_id}")
    func_name, instance, args, kwargs = json.loads(zlib.decompress(stored[b"data"]))
    assert (func_name, instance, args, kwargs) == ("demo.echo", None, [], {"a": [1, 2]})
    assert json.loads(stored[b"meta"]) == {"max_retries": 3, "epoch": 0, "attempts_base": 0}
    assert stored[b"origin"] == b"normal"


def test_the_task_default_priority_applies_when_the_submit_names_none(api: TestClient) -> None:
    assert api.post("/api/v1/jobs", json={"task": "demo.fail"}).json()["priority"] == "low"
    assert api.post("/api/v1/jobs", json={"task": "demo.echo"}).json()["priority"] == "normal"


def test_retry_waits_are_planned_at_submit_and_grow(api: TestClient, fake_redis: fakeredis.FakeRedis) -> None:
    job_id = api.post("/api/v1/jobs", json={"task": "demo.echo", "max_retries": 3}).json()["id"]

    waits = json.loads(fake_redis.hget(f"rq:job:{job_id}", "retry_intervals"))  # type: ignore[arg-type]
    assert len(waits) == 3
    assert 120 <= waits[0] <= 150 and 240 <= waits[1] <= 300 and 480 <= waits[2] <= 600


def test_max_retries_zero_means_one_attempt_and_no_retry_plan(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    job_id = api.post("/api/v1/jobs", json={"task": "demo.echo", "max_retries": 0}).json()["id"]

    assert fake_redis.hget(f"rq:job:{job_id}", "retries_left") is None


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("unknown task", {"task": "no.such.task"}, 422, "unknown_task"),
    ("params the model refuses", {"task": "demo.sleep", "params": {"seconds": -1}}, 422, "invalid_params"),
    (
        "params of the wrong type",
        {"task": "demo.sleep", "params": {"seconds": "soon"}},
        422,
        "invalid_params",
    ),
    ("params not an object", {"task": "demo.echo", "params": [1, 2]}, 422, "invalid_params"),
    ("unknown priority", {"task": "demo.echo", "priority": "urgent"}, 422, "invalid_priority"),
    ("negative max_retries", {"task": "demo.echo", "max_retries": -1}, 422, "invalid_max_retries"),
    ("too many max_retries", {"task": "demo.echo", "max_retries": 26}, 422, "invalid_max_retries"),
    ("fractional max_retries", {"task": "demo.echo", "max_retries": 1.5}, 422, "invalid_max_retries"),
    ("no task", {"params": {}}, 422, "invalid_task"),
    ("empty task name", {"task": ""}, 422, "invalid_task"),
    ("task name of another type", {"task": 7}, 422, "invalid_task"),
    ("unknown field", {"task": "demo.echo", "colour": "red"}, 422, "unknown_field"),
    ("body not an object", [1, 2, 3], 422, "invalid_request"),
]


@pytest.mark.parametrize(("case", "body", "status", "code"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_a_bad_submit_gets_a_clear_4xx_and_writes_nothing(
    api: TestClient, fake_redis: fakeredis.FakeRedis, case: str, body: Any, status: int, code: str
) -> None:
    response = api.post("/api/v1/jobs", json=body)

    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["detail"]
    assert count_rows(api) == 0
    assert fake_redis.keys("rq:job:*") == []


RAW_BODIES: list[tuple[str, bytes, int, str]] = [
    ("malformed JSON", b'{"task": "demo.echo",', 400, "malformed_json"),
    ("NaN", b'{"task": "demo.echo", "params": {"x": NaN}}', 400, "invalid_json_constant"),
    ("Infinity", b'{"task": "demo.echo", "params": {"x": Infinity}}', 400, "invalid_json_constant"),
    ("-Infinity", b'{"task": "demo.echo", "params": {"x": -Infinity}}', 400, "invalid_json_constant"),
    ("invalid UTF-8", b'{"task": "demo.echo", "params": {"x": "\xff\xfe"}}', 400, "invalid_utf8"),
    ("lone surrogate", b'{"task": "demo.echo", "params": {"x": "\\ud800"}}', 400, "invalid_unicode"),
    (
        "deep nesting",
        b'{"task": "demo.echo", "params": ' + b'{"a": ' * 40 + b"1" + b"}" * 41,
        400,
        "too_deep",
    ),
    ("very deep nesting", b"[" * 100_000 + b"]" * 100_000, 400, "too_deep"),
    ("empty body", b"", 422, "invalid_request"),
]


@pytest.mark.parametrize(("case", "raw", "status", "code"), RAW_BODIES, ids=[c[0] for c in RAW_BODIES])
def test_a_hostile_body_gets_a_clear_4xx_and_writes_nothing(
    api: TestClient, fake_redis: fakeredis.FakeRedis, case: str, raw: bytes, status: int, code: str
) -> None:
    response = api.post("/api/v1/jobs", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert count_rows(api) == 0
    assert fake_redis.keys("rq:job:*") == []


def test_a_body_over_the_size_limit_is_refused_before_it_is_read(api: TestClient) -> None:
    big = json.dumps({"task": "demo.echo", "params": {"blob": "x" * 1_100_000}})

    response = api.post("/api/v1/jobs", content=big, headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"
    assert count_rows(api) == 0


def test_a_nul_character_in_params_is_stored_and_returned_intact(api: TestClient) -> None:
    response = api.post(
        "/api/v1/jobs", json={"task": "demo.echo", "params": {"text": "a\u0000b", "emoji": "🚀"}}
    )

    assert response.status_code == 202
    stored = api.get(f"/api/v1/jobs/{response.json()['id']}").json()
    assert stored["params"] == {"text": "a\u0000b", "emoji": "🚀"}


def test_with_redis_down_a_submit_answers_503_and_leaves_no_row_claiming_to_be_queued(
    make_settings: Any,
    make_client: Any,
) -> None:
    dead_redis = make_redis("redis://127.0.0.1:1/0")
    with make_client(make_settings(), redis=dead_redis) as client:
        response = client.post("/api/v1/jobs", json={"task": "demo.echo"})

        assert response.status_code == 503
        assert response.json()["code"] == "redis_unavailable"
        jobs = client.get("/api/v1/jobs").json()["items"]
        assert [job["status"] for job in jobs] == ["failed"]
        assert "not enqueued" in jobs[0]["error"]


def test_with_redis_down_existing_jobs_still_answer_from_sql(
    make_settings: Any,
    fake_redis: fakeredis.FakeRedis,
    make_client: Any,
) -> None:
    with make_client(make_settings(), redis=fake_redis) as client:
        job_id = client.post("/api/v1/jobs", json={"task": "demo.echo"}).json()["id"]

    with make_client(make_settings(), redis=make_redis("redis://127.0.0.1:1/0")) as client:
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200
        assert client.get("/api/v1/jobs").json()["items"][0]["id"] == job_id
        assert client.get("/api/v1/jobs/stats").json()["total"] == 1
        health = client.get("/api/v1/health")
        assert health.status_code == 503
        assert health.json()["redis"].startswith("unavailable")


@pytest.mark.parametrize(
    "dead_url",
    ["sqlite:////nonexistent-dir/lanes.db", "postgresql+psycopg://postgres@127.0.0.1:1/test"],
    ids=["sqlite", "postgresql"],
)
def test_with_the_database_down_the_api_answers_503(fake_redis: fakeredis.FakeRedis, dead_url: str) -> None:
    # The key cannot be checked either: the answer is 503, not 401.
    auth_headers = {"Authorization": f"Bearer lanes_{'0' * 12}_{'A' * 43}"}
    from backend.config import Settings

    settings = Settings.model_validate({"database_url": dead_url, "redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings, redis=fake_redis), headers=auth_headers) as client:
        for response in (
            client.post("/api/v1/jobs", json={"task": "demo.echo"}),
            client.get("/api/v1/jobs"),
            client.get("/api/v1/jobs/abc"),
            client.get("/api/v1/jobs/stats"),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "database_unavailable"
        health = client.get("/api/v1/health")
        assert health.status_code == 503
        assert health.json()["database"].startswith("unavailable")
    assert fake_redis.keys("rq:job:*") == []


def test_the_retry_ceiling_follows_the_setting(
    make_settings: Any, fake_redis: fakeredis.FakeRedis, make_client: Any
) -> None:
    with make_client(make_settings(max_retries_limit=40), redis=fake_redis) as client:
        assert client.post("/api/v1/jobs", json={"task": "demo.echo", "max_retries": 30}).status_code == 202
        refused = client.post("/api/v1/jobs", json={"task": "demo.echo", "max_retries": 41})
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_max_retries"
