"""Batch submits land whole or not at all; an Idempotency-Key makes a retried submit harmless."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend import idempotency, jobs
from backend.config import Settings
from backend.db import make_engine, make_sessionmaker, utcnow
from backend.models import JobRow
from backend.queues import make_redis
from backend.tasks import registry


def count_rows(client: TestClient) -> int:
    with client.app.state.lanes.sessions() as session:  # type: ignore[attr-defined]
        return session.scalar(select(func.count()).select_from(JobRow)) or 0


def batch(api: TestClient, *items: dict[str, Any]) -> Any:
    return api.post("/api/v1/jobs/batch", json={"jobs": list(items)})


# -- batch ---------------------------------------------------------------------------------------


def test_a_batch_is_accepted_whole_and_queued_in_the_order_given(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    response = batch(
        api,
        {"task": "demo.echo", "params": {"n": 1}},
        {"task": "demo.sleep", "params": {"seconds": 0}, "priority": "high"},
        {"task": "demo.echo", "params": {"n": 3}},
    )

    assert response.status_code == 202, response.text
    accepted = response.json()["jobs"]
    assert [job["task"] for job in accepted] == ["demo.echo", "demo.sleep", "demo.echo"]
    assert {job["status"] for job in accepted} == {"queued"}
    assert accepted[1]["params"] == {"seconds": 0, "steps": 10}
    assert fake_redis.lrange("rq:queue:normal", 0, -1) == [
        accepted[0]["id"].encode(),
        accepted[2]["id"].encode(),
    ]
    assert fake_redis.lrange("rq:queue:high", 0, -1) == [accepted[1]["id"].encode()]
    for job in accepted:
        assert api.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_a_batch_of_1001_jobs_is_refused_and_writes_nothing(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    response = batch(api, *[{"task": "demo.echo"}] * 1001)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_jobs"
    assert "at most 1000" in response.json()["detail"][0]["msg"]
    assert count_rows(api) == 0
    assert fake_redis.keys("rq:job:*") == []


def test_a_batch_of_exactly_1000_jobs_is_accepted(api: TestClient, fake_redis: fakeredis.FakeRedis) -> None:
    response = batch(api, *[{"task": "demo.echo"}] * 1000)

    assert response.status_code == 202
    assert len(response.json()["jobs"]) == 1000
    assert fake_redis.llen("rq:queue:normal") == 1000
    assert count_rows(api) == 1000


def test_an_empty_batch_is_refused(api: TestClient) -> None:
    response = batch(api)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_jobs"


BAD_ITEMS: list[tuple[str, Any, str]] = [
    ("unknown task", {"task": "no.such.task"}, "unknown_task"),
    ("params the model refuses", {"task": "demo.sleep", "params": {"seconds": -1}}, "invalid_params"),
    ("unknown field", {"task": "demo.echo", "colour": "red"}, "unknown_field"),
    ("not an object", [1, 2], "invalid_request"),
    ("run_at long past", {"task": "demo.echo", "run_at": "2020-01-01T00:00:00+00:00"}, "run_at_in_past"),
    (
        "both delays",
        {"task": "demo.echo", "delay_s": 5, "run_at": "2099-01-01T00:00:00Z"},
        "conflicting_delay",
    ),
    ("a missing dependency", {"task": "demo.echo", "depends_on": ["nosuchjob"]}, "unknown_dependency"),
    (
        "a later item as dependency",
        {"task": "demo.echo", "depends_on_items": [3]},
        "invalid_depends_on_items",
    ),
    ("a timeout of 0", {"task": "demo.echo", "timeout_s": 0}, "invalid_timeout_s"),
]


@pytest.mark.parametrize(("case", "item", "code"), BAD_ITEMS, ids=[c[0] for c in BAD_ITEMS])
def test_one_bad_item_rejects_the_whole_batch_naming_its_index(
    api: TestClient, fake_redis: fakeredis.FakeRedis, case: str, item: Any, code: str
) -> None:
    good = {"task": "demo.echo"}

    response = batch(api, good, good, good, item, good)

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_batch_item"
    assert body["detail"]["index"] == 3
    assert body["detail"]["code"] == code
    assert body["detail"]["errors"]
    assert count_rows(api) == 0
    assert fake_redis.keys("rq:*") == []


def test_batch_items_may_wait_on_earlier_items_of_the_same_batch(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    first, second, third = batch(
        api,
        {"task": "demo.echo"},
        {"task": "demo.echo", "depends_on_items": [0]},
        {"task": "demo.echo", "depends_on_items": [0, 1]},
    ).json()["jobs"]

    assert first["status"] == "queued" and first["depends_on"] is None
    assert second["status"] == "scheduled" and second["depends_on"] == [first["id"]]
    assert third["status"] == "scheduled" and third["depends_on"] == [first["id"], second["id"]]
    assert fake_redis.lrange("rq:queue:normal", 0, -1) == [first["id"].encode()]
    assert fake_redis.hget(f"rq:job:{second['id']}", "status") == b"deferred"
    assert fake_redis.smembers(f"rq:job:{first['id']}:dependents") == {
        second["id"].encode(),
        third["id"].encode(),
    }
    assert set(fake_redis.zrange("rq:deferred:normal", 0, -1)) == {
        second["id"].encode(),
        third["id"].encode(),
    }


def test_with_redis_down_a_batch_answers_503_and_every_row_is_failed(
    make_settings: Any, make_client: Any
) -> None:
    with make_client(make_settings(), redis=make_redis("redis://127.0.0.1:1/0")) as client:
        response = batch(client, {"task": "demo.echo"}, {"task": "demo.echo", "delay_s": 60})

        assert response.status_code == 503
        assert response.json()["code"] == "redis_unavailable"
        rows = client.get("/api/v1/jobs").json()["items"]
        assert [row["status"] for row in rows] == ["failed", "failed"]
        assert all(row["error"].startswith("not enqueued: Redis unavailable") for row in rows)


# -- idempotency ---------------------------------------------------------------------------------


def test_the_same_key_and_body_return_the_first_job(api: TestClient, fake_redis: fakeredis.FakeRedis) -> None:
    body = {"task": "demo.echo", "params": {"order": 42}}

    first = api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})
    again = api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})

    assert first.status_code == again.status_code == 202
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert count_rows(api) == 1
    assert fake_redis.llen("rq:queue:normal") == 1


def test_the_same_key_with_a_different_body_is_a_conflict(api: TestClient) -> None:
    first = api.post("/api/v1/jobs", json={"task": "demo.echo"}, headers={"Idempotency-Key": "k"}).json()

    response = api.post(
        "/api/v1/jobs", json={"task": "demo.echo", "priority": "high"}, headers={"Idempotency-Key": "k"}
    )

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_conflict"
    assert response.json()["detail"]["job_id"] == first["id"]
    assert count_rows(api) == 1


def test_without_a_key_the_same_body_makes_a_new_job_each_time(api: TestClient) -> None:
    ids = {api.post("/api/v1/jobs", json={"task": "demo.echo"}).json()["id"] for _ in range(2)}

    assert len(ids) == 2


@pytest.mark.parametrize(
    "key", ["x" * 201, "", "tab\there", "é".encode()], ids=["201 chars", "empty", "control", "non-ascii"]
)
def test_a_malformed_key_is_refused(api: TestClient, key: str | bytes) -> None:
    response = api.post("/api/v1/jobs", json={"task": "demo.echo"}, headers={"Idempotency-Key": key})

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_idempotency_key"
    assert count_rows(api) == 0


def test_a_key_of_200_characters_is_accepted(api: TestClient) -> None:
    response = api.post("/api/v1/jobs", json={"task": "demo.echo"}, headers={"Idempotency-Key": "k" * 200})

    assert response.status_code == 202


def test_an_expired_key_makes_a_new_job_and_the_old_row_gives_it_up(api: TestClient) -> None:
    body = {"task": "demo.echo"}
    old = api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "daily"}).json()
    with api.app.state.lanes.sessions() as session:  # type: ignore[attr-defined]
        session.execute(update(JobRow).values(idempotency_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()

    new = api.post(
        "/api/v1/jobs", json={"task": "demo.echo", "params": {"day": 2}}, headers={"Idempotency-Key": "daily"}
    )

    assert new.status_code == 202 and "idempotent-replayed" not in new.headers
    assert new.json()["id"] != old["id"]
    with api.app.state.lanes.sessions() as session:  # type: ignore[attr-defined]
        keys = dict(session.execute(select(JobRow.id, JobRow.idempotency_key)).all())
    assert keys == {old["id"]: None, new.json()["id"]: "daily"}


def test_the_key_lives_for_the_configured_time(
    make_settings: Any, fake_redis: fakeredis.FakeRedis, make_client: Any
) -> None:
    with make_client(make_settings(idempotency_ttl_s=3600), redis=fake_redis) as client:
        before = utcnow()
        client.post("/api/v1/jobs", json={"task": "demo.echo"}, headers={"Idempotency-Key": "k"})
        with client.app.state.lanes.sessions() as session:  # type: ignore[attr-defined]
            expires = session.scalar(select(JobRow.idempotency_expires_at))
    assert expires is not None
    assert timedelta(seconds=3599) <= expires - before <= timedelta(seconds=3601)


def test_a_key_whose_job_redis_refused_is_free_again(
    make_settings: Any,
    fake_redis: fakeredis.FakeRedis,
    make_client: Any,
) -> None:
    headers = {"Idempotency-Key": "retry-me"}
    with make_client(make_settings(), redis=make_redis("redis://127.0.0.1:1/0")) as client:
        assert client.post("/api/v1/jobs", json={"task": "demo.echo"}, headers=headers).status_code == 503
    with make_client(make_settings(), redis=fake_redis) as client:
        response = client.post("/api/v1/jobs", json={"task": "demo.echo"}, headers=headers)

        assert response.status_code == 202 and "idempotent-replayed" not in response.headers
        assert response.json()["status"] == "queued"
        assert count_rows(client) == 2


def _submit_with_key(session: Session, redis: Redis, settings: Settings, key: str) -> jobs.Submission:
    registry.load_modules()  # as an app does at its start: a test run alone has made no app
    request = jobs.JobRequest(task="demo.echo", params={"n": 1})
    return jobs.submit(
        session=session, redis=redis, settings=settings, tasks=registry, request=request, idempotency_key=key
    )


def test_concurrent_submits_with_one_key_make_one_job(
    make_settings: Any, redis: Redis, database_url: str
) -> None:
    settings = make_settings()
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    start = threading.Barrier(8)
    results: list[jobs.Submission] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with sessions() as session:
                start.wait()
                results.append(_submit_with_key(session, redis, settings, "once"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len({result.row.id for result in results}) == 1
    assert sorted(result.replayed for result in results) == [False] + [True] * 7
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobRow)) == 1
    assert redis.llen("rq:queue:normal") == 1
    assert len(redis.keys("rq:job:*")) == 1
    engine.dispose()


def test_a_submit_that_loses_the_race_for_a_key_returns_the_winner_and_enqueues_nothing(
    make_settings: Any, fake_redis: fakeredis.FakeRedis, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    real_find = idempotency.find_replay
    winner: list[jobs.Submission] = []

    def find_then_lose(**kwargs: Any) -> JobRow | None:
        # The loser looks first and finds the key free; the winner then commits before it inserts.
        found = real_find(**kwargs)
        if not winner:
            with sessions() as other:
                monkeypatch.setattr(idempotency, "find_replay", real_find)
                winner.append(_submit_with_key(other, fake_redis, settings, "race"))
                monkeypatch.setattr(idempotency, "find_replay", find_then_lose)
        return found

    monkeypatch.setattr(idempotency, "find_replay", find_then_lose)
    with sessions() as session:
        loser = _submit_with_key(session, fake_redis, settings, "race")

    assert not winner[0].replayed
    assert loser.replayed and loser.row.id == winner[0].row.id
    assert fake_redis.lrange("rq:queue:normal", 0, -1) == [winner[0].row.id.encode()]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobRow)) == 1
    engine.dispose()


def test_the_body_hash_is_canonical() -> None:
    a = idempotency.body_hash({"task": "t", "params": {"a": 1, "b": [1, 2]}})
    b = idempotency.body_hash({"params": {"b": [1, 2], "a": 1}, "task": "t"})

    assert a == b and len(a) == 64
    assert a != idempotency.body_hash({"task": "t", "params": {"a": 2, "b": [1, 2]}})
