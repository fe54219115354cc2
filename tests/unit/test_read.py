"""Reading jobs back: one job, pages of jobs, counts, the task catalogue and health."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from backend import estimates, workload
from backend.models import JobRow


def submit(api: TestClient, task: str = "demo.echo", **body: object) -> str:
    response = api.post("/api/v1/jobs", json={"task": task, **body})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_a_job_reads_back_with_every_documented_field(api: TestClient) -> None:
    job_id = submit(api, "demo.sleep", params={"seconds": 1})

    job = api.get(f"/api/v1/jobs/{job_id}").json()

    documented = {
        "id", "task", "status", "priority", "queue", "params", "progress", "stage", "result", "error",
        "attempts", "max_retries", "next_retry_at", "created_at", "enqueued_at", "started_at",
        "finished_at", "worker",
    }  # fmt: skip
    assert documented <= set(job)
    assert job["progress"] == 0 and job["result"] is None and job["started_at"] is None


@pytest.mark.parametrize(
    "job_id", ["0123456789abcdef", "has%20spaces", "x" * 65, "semi;colon", "nul%00byte", "%F0%9F%9A%80"]
)
def test_an_unknown_or_malformed_job_id_is_404(api: TestClient, job_id: str) -> None:
    response = api.get(f"/api/v1/jobs/{job_id}")

    assert response.status_code == 404
    assert response.json()["code"] == "job_not_found"


def test_the_list_is_newest_first_and_pages_with_a_cursor_without_gaps_or_repeats(api: TestClient) -> None:
    ids = [submit(api) for _ in range(7)]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == 3
    assert seen == list(reversed(ids))


def test_the_list_filters_by_status_task_and_priority(api: TestClient) -> None:
    echo_high = submit(api, "demo.echo", priority="high")
    submit(api, "demo.echo", priority="low")
    sleep_high = submit(api, "demo.sleep", priority="high")

    def ids(**filters: str) -> list[str]:
        return [job["id"] for job in api.get("/api/v1/jobs", params=filters).json()["items"]]

    assert ids(priority="high") == [sleep_high, echo_high]
    assert ids(task="demo.echo", priority="high") == [echo_high]
    assert ids(status="queued", task="demo.sleep") == [sleep_high]
    assert ids(status="succeeded") == []


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"status": "done"}, "invalid_status"),
        ({"priority": "urgent"}, "invalid_priority"),
        ({"limit": 0}, "invalid_limit"),
        ({"limit": "many"}, "invalid_limit"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": "bm9waXBl"}, "invalid_cursor"),
        ({"task": "bad task"}, "invalid_task"),
    ],
)
def test_a_bad_list_filter_is_a_clear_422(api: TestClient, params: dict[str, object], code: str) -> None:
    response = api.get("/api/v1/jobs", params=params)

    assert response.status_code == 422, response.text
    assert response.json()["code"] == code


def test_the_page_size_is_capped(api: TestClient) -> None:
    for _ in range(3):
        submit(api)
    api.app.state.lanes.settings.list_limit_max = 2  # type: ignore[attr-defined]

    page = api.get("/api/v1/jobs", params={"limit": 1000}).json()

    assert len(page["items"]) == 2 and page["next_cursor"] is not None


def test_stats_count_by_status_overall_and_per_queue(api: TestClient) -> None:
    submit(api, priority="high")
    submit(api, priority="high")
    submit(api, priority="low")

    stats = api.get("/api/v1/jobs/stats").json()

    assert stats["total"] == 3
    assert stats["by_status"]["queued"] == 3 and stats["by_status"]["succeeded"] == 0
    assert stats["queues"]["high"]["total"] == 2
    assert stats["queues"]["normal"] == {"total": 0, "by_status": dict.fromkeys(stats["by_status"], 0)}
    assert stats["queues"]["low"]["by_status"]["queued"] == 1


def test_tasks_are_listed_with_their_parameter_schema(api: TestClient) -> None:
    tasks = {task["name"]: task for task in api.get("/api/v1/tasks").json()}

    assert {"demo.echo", "demo.sleep", "demo.flaky", "demo.fail"} <= set(tasks)
    sleep = tasks["demo.sleep"]
    assert sleep["params_schema"]["properties"]["seconds"]["type"] == "number"
    assert sleep["priority"] == "normal" and sleep["timeout_s"] > 0
    assert tasks["demo.fail"]["priority"] == "low"


def test_health_is_503_with_the_reason_when_no_worker_is_alive(api: TestClient) -> None:
    response = api.get("/api/v1/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy" and body["redis"] == "ok" and body["database"] == "ok"
    assert body["workers"] == 0 and "no live workers" in body["reasons"][0]


def test_health_is_200_when_redis_the_database_and_a_worker_answer(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    fake_redis.sadd("rq:workers", "rq:worker:w1")
    fake_redis.hset("rq:worker:w1", "state", "idle")

    response = api.get("/api/v1/health")

    assert response.status_code == 200
    body = response.json()
    assert body.pop("redis_latency_ms") >= 0
    body.pop("redis_memory_bytes")  # fakeredis has no INFO memory; tests/integration read a real one
    assert body == {
        "status": "healthy",
        "redis": "ok",
        "database": "ok",
        "workers": 1,
        "scheduler": {
            "running": 0,
            "last_heartbeat_at": None,
            "last_sync_at": None,
            "last_reconcile_at": None,
            "last_reconcile": None,
            "last_prune_at": None,
        },
        "reasons": [],
        "warnings": [],
        "oldest_queued_age_s": None,
        "mirror_pending": 0,
    }


def test_unknown_routes_and_methods_answer_in_the_same_error_shape(api: TestClient) -> None:
    assert api.get("/api/v1/nothing").json() == {"detail": "Not Found", "code": "not_found"}
    response = api.delete("/api/v1/jobs")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"


def test_liveness_answers_without_looking_at_redis_or_the_database(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}


def test_a_waiting_job_shows_its_place_in_the_queue_and_when_it_should_start(
    api: TestClient, fake_redis: fakeredis.FakeRedis
) -> None:
    fake_redis.sadd("rq:workers", "rq:worker:w1")
    fake_redis.hset("rq:worker:w1", mapping={"state": "idle", "queues": "high,normal,low"})
    record_history(api, task="demo.echo", runs_s=[2.0, 4.0])  # the estimate averages past runs
    first = submit(api, "demo.echo", priority="high")
    second = submit(api, "demo.echo")

    job = api.get(f"/api/v1/jobs/{second}").json()
    page = {item["id"]: item for item in api.get("/api/v1/jobs").json()["items"]}

    assert job["position"] == 1 and job["ahead"] == 1  # the high job goes first
    assert job["estimated_start_at"] is not None and job["estimated_finish_at"] is not None
    assert page[second]["position"] == 1 and page[first]["position"] == 1 and page[first]["ahead"] == 0


def test_a_retrying_job_is_looked_for_in_its_queue_only_once_its_wait_is_over(
    api: TestClient, fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting_out, due = submit(api), submit(api)
    now = datetime.now(UTC)
    with api.app.state.lanes.sessions() as session:  # type: ignore[attr-defined]
        for job_id, retry_at in (
            (waiting_out, now + timedelta(minutes=5)),
            (due, now - timedelta(seconds=1)),
        ):
            row = session.get(JobRow, job_id)
            assert row is not None
            row.status, row.next_retry_at = "retrying", retry_at
        session.commit()
    fake_redis.lrem("rq:queue:normal", 0, waiting_out)  # in RQ's scheduled registry, not the queue
    asked: list[str] = []
    read = workload.read_workload

    def spy(redis: Redis, jobs: list[tuple[str, str]]) -> workload.Workload:
        asked.extend(job_id for job_id, _ in jobs)
        return read(redis, jobs)

    monkeypatch.setattr(estimates, "read_workload", spy)

    page = {item["id"]: item for item in api.get("/api/v1/jobs").json()["items"]}

    assert asked == [due]  # the other would cost a scan of the whole queue, to find nothing
    assert page[due]["position"] == 1 and page[waiting_out]["position"] is None


def record_history(api: TestClient, *, task: str, runs_s: list[float]) -> None:
    """Finished runs of `task` in SQL, as a worker would have left them."""
    now = datetime.now(UTC)
    with api.app.state.lanes.sessions() as session:  # type: ignore[attr-defined]
        for n, run_s in enumerate(runs_s):
            started = now - timedelta(minutes=10 - n)
            session.add(
                JobRow(
                    id=f"past{n}",
                    task=task,
                    queue="normal",
                    priority="normal",
                    status="succeeded",
                    params={},
                    attempts=1,
                    max_retries=0,
                    progress=100,
                    webhook_attempts=0,
                    epoch=0,
                    created_at=started,
                    started_at=started,
                    finished_at=started + timedelta(seconds=run_s),
                    updated_at=now,
                )
            )
        session.commit()
