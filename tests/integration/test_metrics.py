"""`GET /metrics` against real workers: it parses as Prometheus text, and its numbers match the API's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from backend.enums import Plan, Role
from tests.conftest import tenant_key
from tests.helpers import WorkerFactory
from tests.integration.support import submit, wait_for_status

pytestmark = pytest.mark.integration


def scrape(api: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics` by (name, sorted labels), parsed by prometheus-client's own parser."""
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_parse_and_match_what_the_api_says(
    live_api: TestClient, workers: WorkerFactory, database_url: str
) -> None:
    echoes = [submit(live_api, "demo.echo", {"n": n}) for n in range(3)]
    failing = submit(live_api, "demo.fail", {}, max_retries=1)
    later = [submit(live_api, "demo.echo", {}, delay_s=3600) for _ in range(2)]
    workers.start()
    for job in echoes:
        wait_for_status(live_api, job["id"], "succeeded")
    wait_for_status(live_api, failing["id"], "failed", timeout_s=60)

    samples = scrape(live_api)
    queues = {q["name"]: q for q in live_api.get("/api/v1/queues").json()["queues"]}

    for queue in ("high", "normal", "low"):
        for status, count in queues[queue]["sql"].items():
            assert value(samples, "lanes_jobs", queue=queue, status=status) == count, (queue, status)
        assert value(samples, "lanes_queue_depth", queue=queue) == queues[queue]["rq"]["queued"]
        for registry in ("started", "scheduled", "finished", "failed"):
            expected = queues[queue]["rq"][registry]
            assert value(samples, "lanes_queue_registry_jobs", queue=queue, registry=registry) == expected
    assert value(samples, "lanes_queue_registry_jobs", queue="normal", registry="scheduled") == len(later)
    assert value(samples, "lanes_workers") == 1
    assert value(samples, "lanes_jobs_submitted_total", task="demo.echo") == 5
    assert value(samples, "lanes_jobs_submitted_total", task="demo.fail") == 1
    assert value(samples, "lanes_jobs_succeeded_total", task="demo.echo") == 3
    assert value(samples, "lanes_jobs_retried_total", task="demo.fail") == 1
    assert value(samples, "lanes_jobs_failed_total", task="demo.fail") == 1
    assert value(samples, "lanes_job_run_seconds_count", queue="normal") == 3
    assert value(samples, "lanes_job_run_seconds_count", queue="low") == 2  # both attempts
    assert value(samples, "lanes_job_run_seconds_bucket", queue="normal", le="+Inf") == 3
    assert value(samples, "lanes_job_wait_seconds_count", queue="normal") == 3
    assert value(samples, "lanes_job_wait_seconds_sum", queue="normal") >= 0


def test_metrics_are_for_platform_admins(live_api: TestClient, database_url: str) -> None:
    member: Any = {
        "Authorization": f"Bearer {tenant_key(database_url, 'alice', role=Role.ADMIN, plan=Plan.PRO)}"
    }

    refused = live_api.get("/metrics", headers=member)
    anonymous = live_api.get("/metrics", headers={"Authorization": ""})

    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert anonymous.status_code == 401


def test_a_worker_with_json_logs_writes_one_json_line_per_job_state_change(
    live_api: TestClient, workers: WorkerFactory
) -> None:
    worker = workers.start(log_json=1)
    job = submit(live_api, "demo.fail", {}, max_retries=1)
    wait_for_status(live_api, job["id"], "failed", timeout_s=60)

    lines = [line for line in worker.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON, RQ's own included
    changes = [r for r in records if r["logger"] == "lanes.jobs" and r.get("job_id") == job["id"]]

    assert [(r["status"], r["attempt"]) for r in changes] == [
        ("started", 1),
        ("retrying", 1),
        ("started", 2),
        ("failed", 2),
    ]
    for record in changes:
        assert (record["task"], record["queue"], record["level"]) == ("demo.fail", "low", "INFO")
        assert record["duration_s"] is None or record["duration_s"] >= 0
        assert record["timestamp"].endswith("+00:00")
    assert changes[-1]["duration_s"] is not None
    assert any(r["logger"].startswith("rq.") for r in records)
