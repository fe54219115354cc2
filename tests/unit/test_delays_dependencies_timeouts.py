"""Delays, dependencies and timeouts on submit; the cascade that cancels jobs whose dependency died."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient
from rq.job import JobStatus as RQStatus
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from backend import dependencies, mirror
from backend.db import make_engine, utcnow
from backend.enums import JobStatus
from backend.migrate import downgrade, upgrade
from backend.models import JobRow
from backend.queues import LanesJob
from backend.sync import JobMirror


def submit(api: TestClient, task: str = "demo.echo", **body: Any) -> dict[str, Any]:
    response = api.post("/api/v1/jobs", json={"task": task, **body})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def refused(api: TestClient, **body: Any) -> dict[str, Any]:
    response = api.post("/api/v1/jobs", json={"task": "demo.echo", **body})
    assert response.status_code == 422, response.text
    answer: dict[str, Any] = response.json()
    return answer


def sessions_of(api: TestClient) -> Any:
    return api.app.state.lanes.sessions  # type: ignore[attr-defined]


def set_status(api: TestClient, job_id: str, status: JobStatus, **values: Any) -> None:
    with sessions_of(api)() as session:
        session.execute(update(JobRow).where(JobRow.id == job_id).values(status=status.value, **values))
        session.commit()


def count_rows(api: TestClient) -> int:
    with sessions_of(api)() as session:
        return int(session.scalar(select(func.count()).select_from(JobRow)) or 0)


# -- delays --------------------------------------------------------------------------------------


def test_a_delayed_job_is_scheduled_in_sql_and_in_rqs_scheduled_registry(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    before = utcnow()
    job = submit(api, delay_s=90)

    run_at = datetime.fromisoformat(job["run_at"])
    assert job["status"] == "scheduled"
    assert timedelta(seconds=90) <= run_at - before < timedelta(seconds=91)
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["run_at"] == job["run_at"]
    assert fake_redis.llen("rq:queue:normal") == 0
    assert fake_redis.hget(f"rq:job:{job['id']}", "status") == b"scheduled"
    # RQ keeps whole seconds: the due time is rounded up, so the job never runs early.
    assert fake_redis.zscore("rq:scheduled:normal", job["id"]) == math.ceil(run_at.timestamp())


def test_run_at_with_any_offset_is_stored_in_utc(api: TestClient) -> None:
    local = (utcnow() + timedelta(hours=1)).replace(microsecond=0).astimezone(timezone(timedelta(hours=2)))

    job = submit(api, run_at=local.isoformat())

    assert job["status"] == "scheduled"
    assert job["run_at"].endswith("+00:00")
    assert datetime.fromisoformat(job["run_at"]) == local


def test_a_run_at_within_the_last_minute_runs_now(api: TestClient, fake_redis: fakeredis.FakeRedis) -> None:
    job = submit(api, run_at=(utcnow() - timedelta(seconds=30)).isoformat())

    assert job["status"] == "queued"
    assert fake_redis.lrange("rq:queue:normal", 0, -1) == [job["id"].encode()]


def test_a_delay_of_zero_runs_now(api: TestClient, fake_redis: fakeredis.FakeRedis) -> None:
    job = submit(api, delay_s=0)

    assert job["status"] == "queued"
    assert fake_redis.llen("rq:queue:normal") == 1


BAD_DELAYS: list[tuple[str, dict[str, Any], str]] = [
    ("run_at long past", {"run_at": "2020-01-01T00:00:00+00:00"}, "run_at_in_past"),
    ("both run_at and delay_s", {"run_at": "2099-01-01T00:00:00+00:00", "delay_s": 5}, "conflicting_delay"),
    ("run_at without offset", {"run_at": "2099-01-01T00:00:00"}, "invalid_run_at"),
    ("run_at not a time", {"run_at": "tomorrow"}, "invalid_run_at"),
    ("run_at too far ahead", {"run_at": "2999-01-01T00:00:00+00:00"}, "invalid_run_at"),
    ("negative delay", {"delay_s": -1}, "invalid_delay_s"),
    ("delay too long", {"delay_s": 31 * 86_400}, "invalid_delay_s"),
    ("delay not a number", {"delay_s": "soon"}, "invalid_delay_s"),
]


@pytest.mark.parametrize(("case", "body", "code"), BAD_DELAYS, ids=[c[0] for c in BAD_DELAYS])
def test_a_bad_delay_is_refused_and_writes_nothing(
    api: TestClient, fake_redis: fakeredis.FakeRedis, case: str, body: dict[str, Any], code: str
) -> None:
    assert refused(api, **body)["code"] == code
    assert count_rows(api) == 0
    assert fake_redis.keys("rq:*") == []


def test_the_run_at_refusal_says_when_it_was_and_when_it_is(api: TestClient) -> None:
    answer = refused(api, run_at=(utcnow() - timedelta(minutes=5)).isoformat())

    assert answer["code"] == "run_at_in_past"
    assert set(answer["detail"]) == {"message", "run_at", "now"}


# -- dependencies --------------------------------------------------------------------------------


def test_a_job_waits_on_its_dependencies_scheduled_in_sql_and_deferred_in_rq(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    parent = submit(api)
    other = submit(api)

    child = submit(api, depends_on=[parent["id"], other["id"], parent["id"]])

    assert child["status"] == "scheduled"
    assert child["depends_on"] == [parent["id"], other["id"]]  # repeats dropped, order kept
    assert api.get(f"/api/v1/jobs/{child['id']}").json()["depends_on"] == child["depends_on"]
    assert fake_redis.hget(f"rq:job:{child['id']}", "status") == b"deferred"
    assert fake_redis.smembers(f"rq:job:{parent['id']}:dependents") == {child["id"].encode()}
    assert child["id"].encode() not in fake_redis.lrange("rq:queue:normal", 0, -1)


def test_a_job_whose_dependencies_all_succeeded_is_queued_at_once(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    parent = submit(api)
    set_status(api, parent["id"], JobStatus.SUCCEEDED)
    fake_redis.delete(f"rq:job:{parent['id']}")  # its result has expired from Redis

    child = submit(api, depends_on=[parent["id"]])

    assert child["status"] == "queued"
    assert fake_redis.lrange("rq:queue:normal", 0, -1)[-1] == child["id"].encode()


def test_in_sql_a_job_without_dependencies_has_a_null_depends_on_and_one_with_them_lists_them(
    api: TestClient,
) -> None:
    # What an operator querying the job history would write: `depends_on IS NULL`.
    alone = submit(api)["id"]
    delayed = submit(api, delay_s=90)["id"]
    batch = api.post("/api/v1/jobs/batch", json={"jobs": [{"task": "demo.echo"}]})
    assert batch.status_code == 202, batch.text
    in_batch = batch.json()["jobs"][0]["id"]
    child = submit(api, depends_on=[alone])["id"]

    with sessions_of(api)() as session:
        without = session.scalars(select(JobRow.id).where(JobRow.depends_on.is_(None))).all()
        depends = session.scalar(select(JobRow.depends_on).where(JobRow.id == child))

    assert sorted(without) == sorted([alone, delayed, in_batch])
    assert depends == [alone]
    assert api.get(f"/api/v1/jobs/{alone}").json()["depends_on"] is None  # the API as before


def test_the_migration_gives_waiting_rows_without_dependencies_a_null_depends_on(database_url: str) -> None:
    downgrade(database_url, revision="0011", quiet=True)
    engine = make_engine(database_url)
    rows = {"waiting": ("scheduled", "null"), "ended": ("succeeded", "null"), "child": ("scheduled", '["p"]')}
    try:
        with engine.begin() as conn:
            for job_id, (status, depends_on) in rows.items():
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, task, queue, priority, status, progress, params, depends_on,"
                        " attempts, epoch, max_retries, webhook_attempts, created_at, updated_at)"
                        " VALUES (:id, 'demo.echo', 'normal', 'normal', :status, 0, '{}', :depends_on,"
                        " 0, 0, 0, 0, :at, :at)"
                    ),
                    {"id": job_id, "status": status, "depends_on": depends_on, "at": "2026-12-03 12:00:00"},
                )
        upgrade(database_url, quiet=True)
        with engine.connect() as conn:
            null = set(conn.scalars(text("SELECT id FROM jobs WHERE depends_on IS NULL")))
            child = conn.scalar(text("SELECT CAST(depends_on AS TEXT) FROM jobs WHERE id = 'child'"))
        assert null == {"waiting"}  # an ended row keeps its JSON null: the upgrade rewrites no history
        assert child == '["p"]'
    finally:
        engine.dispose()
        upgrade(database_url, quiet=True)


def test_a_missing_dependency_is_refused_by_name(api: TestClient, fake_redis: fakeredis.FakeRedis) -> None:
    parent = submit(api)

    answer = refused(api, depends_on=[parent["id"], "nosuchjob"])

    assert answer["code"] == "unknown_dependency"
    assert answer["detail"]["id"] == "nosuchjob"
    assert "nosuchjob" in answer["detail"]["message"]
    assert count_rows(api) == 1


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.CANCELLED])
def test_depending_on_a_job_that_already_failed_or_was_cancelled_is_refused(
    api: TestClient, status: JobStatus
) -> None:
    parent = submit(api)
    set_status(api, parent["id"], status)

    answer = refused(api, depends_on=[parent["id"]])

    assert answer["code"] == "dependency_failed"
    assert answer["detail"]["id"] == parent["id"]
    assert answer["detail"]["status"] == status.value


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"depends_on": [f"job{n}" for n in range(101)]}, "invalid_depends_on"),
        ({"depends_on": ["not a job id!"]}, "invalid_depends_on"),
        ({"depends_on": "abc"}, "invalid_depends_on"),
        ({"depends_on": ["x"], "delay_s": 10}, "delay_with_dependencies"),
        ({"depends_on_items": [0]}, "unknown_field"),  # a batch-only field
    ],
    ids=["101 ids", "malformed id", "not a list", "with a delay", "depends_on_items outside a batch"],
)
def test_a_bad_depends_on_is_refused(api: TestClient, body: dict[str, Any], code: str) -> None:
    if code == "delay_with_dependencies":
        body = {**body, "depends_on": [submit(api)["id"]]}

    assert refused(api, **body)["code"] == code


def make_chain(api: TestClient) -> dict[str, str]:
    """parent <- a <- b, parent <- c, and an unrelated waiting job."""
    parent = submit(api)["id"]
    a = submit(api, depends_on=[parent])["id"]
    b = submit(api, depends_on=[a])["id"]
    c = submit(api, depends_on=[parent])["id"]
    other = submit(api, depends_on=[submit(api)["id"]])["id"]
    return {"parent": parent, "a": a, "b": b, "c": c, "other": other}


def test_when_a_dependency_fails_its_dependents_are_cancelled_transitively_in_sql_and_rq(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    ids = make_chain(api)
    set_status(api, ids["parent"], JobStatus.FAILED, error="ValueError: boom")

    with sessions_of(api)() as session:
        cancelled = dependencies.cancel_dependents(
            session=session, redis=fake_redis, job_id=ids["parent"], reason="failed: ValueError: boom"
        )

    assert sorted(cancelled[:2]) == sorted([ids["a"], ids["c"]]) and cancelled[2:] == [ids["b"]]
    rows = {key: api.get(f"/api/v1/jobs/{job_id}").json() for key, job_id in ids.items()}
    for key in ("a", "b", "c"):
        assert rows[key]["status"] == "cancelled"
        assert rows[key]["cancelled_by"] == "dependency"
        assert rows[key]["cancelled_at"] is not None and rows[key]["finished_at"] is not None
        assert LanesJob.fetch(ids[key], connection=fake_redis).get_status() == "canceled"
    assert rows["a"]["error"] == f"dependency {ids['parent']} failed: ValueError: boom"
    assert rows["b"]["error"] == (
        f"dependency {ids['a']} was cancelled because dependency {ids['parent']} failed: ValueError: boom"
    )
    assert rows["other"]["status"] == "scheduled"


def test_the_cascade_cancels_nothing_twice_and_leaves_jobs_that_already_run(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    ids = make_chain(api)
    set_status(api, ids["c"], JobStatus.STARTED)

    with sessions_of(api)() as session:
        first = dependencies.cancel_dependents(
            session=session, redis=fake_redis, job_id=ids["parent"], reason="was cancelled"
        )
        second = dependencies.cancel_dependents(
            session=session, redis=fake_redis, job_id=ids["parent"], reason="was cancelled"
        )

    assert first == [ids["a"], ids["b"]]
    assert second == []
    assert api.get(f"/api/v1/jobs/{ids['c']}").json()["status"] == "started"
    assert api.get(f"/api/v1/jobs/{ids['a']}").json()["error"] == f"dependency {ids['parent']} was cancelled"


def test_an_id_with_underscores_matches_only_itself(api: TestClient, fake_redis: fakeredis.FakeRedis) -> None:
    # `_` is a LIKE wildcard: "a_c" must not pick up a job waiting on "abc".
    with sessions_of(api)() as session:
        now = utcnow()
        for job_id, depends_on in (("a_c", None), ("abc", None), ("waits", ["abc"])):
            session.add(
                JobRow(
                    id=job_id, task="demo.echo", queue="normal", priority="normal", status="scheduled",
                    params={}, depends_on=depends_on, created_at=now, updated_at=now,
                )
            )  # fmt: skip
        session.commit()
        assert (
            dependencies.cancel_dependents(session=session, redis=fake_redis, job_id="a_c", reason="failed")
            == []
        )
        assert dependencies.cancel_dependents(
            session=session, redis=fake_redis, job_id="abc", reason="failed"
        ) == ["waits"]


def test_the_worker_cascades_when_rq_fails_a_job_for_good(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    ids = make_chain(api)
    parent = LanesJob.fetch(ids["parent"], connection=fake_redis)
    parent.set_status(RQStatus.FAILED)
    job_mirror = JobMirror(sessions=sessions_of(api), redis=fake_redis)

    job_mirror.ended_badly(
        parent, attempt=1, exc_string="Traceback (most recent call last):\nValueError: boom\n"
    )

    assert api.get(f"/api/v1/jobs/{ids['parent']}").json()["status"] == "failed"
    b = api.get(f"/api/v1/jobs/{ids['b']}").json()
    assert b["status"] == "cancelled" and b["cancelled_by"] == "dependency"
    assert f"dependency {ids['parent']} failed: ValueError: boom" in b["error"]


def test_a_failing_cascade_never_raises_into_rq(
    api: TestClient, fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = make_chain(api)
    parent = LanesJob.fetch(ids["parent"], connection=fake_redis)
    parent.set_status(RQStatus.FAILED)

    def explode(**_: Any) -> list[str]:
        raise RuntimeError("database away")

    monkeypatch.setattr("backend.sync.cancel_dependents", explode)
    job_mirror = JobMirror(sessions=sessions_of(api), redis=fake_redis)

    job_mirror.ended_badly(parent, attempt=1, exc_string="ValueError: boom")

    assert job_mirror.failures == 1
    assert api.get(f"/api/v1/jobs/{ids['parent']}").json()["status"] == "failed"


def test_jobs_stranded_by_a_lost_cascade_are_found_and_cancelled(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    ids = make_chain(api)
    set_status(api, ids["parent"], JobStatus.CANCELLED)  # as if the worker's cascade write was lost

    with sessions_of(api)() as session:
        cancelled = dependencies.cancel_stranded(session=session, redis=fake_redis)
        again = dependencies.cancel_stranded(session=session, redis=fake_redis)

    assert sorted(cancelled) == sorted([ids["a"], ids["b"], ids["c"]])
    assert again == []
    assert api.get(f"/api/v1/jobs/{ids['other']}").json()["status"] == "scheduled"


def a_parent_failed_unseen(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> str:
    """A failed job whose failure the next submit's check does not see yet: the check still finds it
    running, as if it failed between the check and the commit of its dependents. Its id."""
    parent = submit(api)["id"]
    set_status(api, parent, JobStatus.FAILED, error="ValueError: late")
    real_statuses = dependencies.statuses_of
    calls = 0

    def stale_first(session: Session, job_ids: Any, tenant_id: str | None = None) -> dict[str, JobStatus]:
        nonlocal calls
        calls += 1
        found = real_statuses(session, job_ids, tenant_id)
        return {job_id: JobStatus.STARTED for job_id in found} if calls == 1 else found

    monkeypatch.setattr(dependencies, "statuses_of", stale_first)
    return parent


def test_a_dependency_that_fails_while_the_dependent_is_submitted_still_cancels_it(
    api: TestClient, fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = a_parent_failed_unseen(api, monkeypatch)

    child = submit(api, depends_on=[parent])

    assert child["status"] == "cancelled"
    assert child["cancelled_by"] == "dependency"
    assert child["error"] == f"dependency {parent} failed: ValueError: late"
    assert LanesJob.fetch(child["id"], connection=fake_redis).get_status() == "canceled"


#: What a job's answer says of its row (a read adds estimates of its start).
ROW_FIELDS = ("id", "status", "params", "error", "cancelled_at", "cancelled_by", "finished_at")


def test_a_batch_answers_with_its_jobs_cancelled_by_a_dependency_that_failed_meanwhile(
    api: TestClient, fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch is written as plain values, not ORM rows: the rows cancelled after the commit are read
    # again, so its answer says what SQL says.
    parent = a_parent_failed_unseen(api, monkeypatch)

    response = api.post(
        "/api/v1/jobs/batch",
        json={"jobs": [{"task": "demo.echo", "depends_on": [parent]}, {"task": "demo.echo"}]},
    )

    assert response.status_code == 202, response.text
    child, other = response.json()["jobs"]
    assert (child["status"], child["cancelled_by"]) == ("cancelled", "dependency")
    assert child["error"] == f"dependency {parent} failed: ValueError: late"
    assert other["status"] == "queued"
    for job in (child, other):  # the answer is the row, as a read of the job shows it
        read = api.get(f"/api/v1/jobs/{job['id']}").json()
        assert {key: read[key] for key in ROW_FIELDS} == {key: job[key] for key in ROW_FIELDS}
    assert LanesJob.fetch(child["id"], connection=fake_redis).get_status() == "canceled"


# -- timeouts ------------------------------------------------------------------------------------


def test_a_job_timeout_is_stored_and_given_to_rq(api: TestClient, fake_redis: fakeredis.FakeRedis) -> None:
    job = submit(api, "demo.sleep", timeout_s=7)

    assert job["timeout_s"] == 7
    assert fake_redis.hget(f"rq:job:{job['id']}", "timeout") == b"7"


def test_without_a_timeout_the_tasks_own_applies(api: TestClient) -> None:
    assert submit(api, "demo.sleep")["timeout_s"] == 3700


@pytest.mark.parametrize("timeout_s", [0, -5, 86_401, 2.5, "long"])
def test_a_bad_timeout_is_refused(api: TestClient, timeout_s: Any) -> None:
    assert refused(api, timeout_s=timeout_s)["code"] == "invalid_timeout_s"


def test_a_run_killed_at_its_timeout_reads_timed_out_and_keeps_rqs_traceback() -> None:
    traceback = (
        'Traceback (most recent call last):\n  File "rq/job.py", line 1, in perform\n'
        "rq.timeouts.JobTimeoutException: Task exceeded maximum timeout value (3 seconds)\n"
    )

    assert mirror.error_line(traceback) == "timed out after 3 s"
    values = mirror.failed_values(error=mirror.error_line(traceback), traceback=traceback)
    assert values["traceback"] == traceback


def test_the_new_fields_read_back_on_every_job(api: TestClient) -> None:
    job = api.get(f"/api/v1/jobs/{submit(api)['id']}").json()

    assert {"run_at", "depends_on", "timeout_s", "cancelled_at", "cancelled_by"} <= set(job)
    assert job["run_at"] is None and job["depends_on"] is None and job["cancelled_by"] is None
