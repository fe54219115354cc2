"""Webhooks for real: workers deliver to an HTTP receiver on loopback (allow-listed), signed and tracked.

Both databases; real worker processes on the private redis-server; the receiver is `tests.receiver`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from backend.devredis import free_port
from tests.helpers import WorkerFactory, wait_for
from tests.integration.support import row, submit, wait_for_status
from tests.receiver import Answer, Receiver, serve

pytestmark = pytest.mark.integration

#: What the API and the workers of these stories run with: loopback admitted, quick retries.
WEBHOOK_SETTINGS: dict[str, Any] = {
    "webhook_allow": "127.0.0.0/8",
    "webhook_retry_base_s": 1,
    "webhook_timeout_s": 1,
    "retry_base_s": 1,
}


@pytest.fixture
def api(api_factory: Any) -> TestClient:
    client: TestClient = api_factory(**WEBHOOK_SETTINGS)
    return client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve() as receiver:
        yield receiver


def start_worker(workers: WorkerFactory, **settings: Any) -> None:
    workers.start(**{**WEBHOOK_SETTINGS, **settings})


def secret(api: TestClient) -> str:
    response = api.get("/api/v1/webhooks/secret")
    assert response.status_code == 200, response.text
    value: str = response.json()["secret"]
    return value


def verified(api: TestClient, request: Any, key: str | None = None) -> dict[str, Any]:
    """The request's body, once its Standard Webhooks signature checks out."""
    body: dict[str, Any] = Webhook(key or secret(api)).verify(request.body, request.headers)
    return body


def delivered(api: TestClient, job_id: str, *, timeout_s: float = 30) -> dict[str, Any]:
    """The job's row once its webhook is delivered or given up."""
    found: dict[str, Any] = wait_for(
        lambda: (current := row(api, job_id))["webhook_delivered"] is not None and current,
        timeout_s=timeout_s,
        message=f"the webhook of job {job_id} to be delivered or given up",
    )
    return found


def attempts(api: TestClient, job_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/jobs/{job_id}/webhooks")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def test_success_failure_and_cancel_events_arrive_signed_and_verify(
    api: TestClient, receiver: Receiver, workers: WorkerFactory
) -> None:
    start_worker(workers)
    ok = submit(api, "demo.echo", {"report": "daily"}, webhook_url=receiver.url)
    bad = submit(api, "demo.fail", {}, max_retries=0, webhook_url=receiver.url)
    later = submit(api, "demo.echo", {}, delay_s=3600, webhook_url=receiver.url)
    assert api.post(f"/api/v1/jobs/{later['id']}/cancel").status_code == 200

    wait_for(lambda: len(receiver.received) >= 3, timeout_s=30, message="three webhook requests")
    events = {body["data"]["job"]: body for body in (verified(api, r) for r in receiver.received)}

    assert events[ok["id"]]["event"] == "job.succeeded"
    assert events[ok["id"]]["data"]["result"] == {"report": "daily"}
    assert events[bad["id"]]["event"] == "job.failed" and "always fails" in events[bad["id"]]["data"]["error"]
    assert events[later["id"]]["event"] == "job.cancelled"
    for request in receiver.received:
        body = json.loads(request.body)
        assert request.headers["webhook-id"] == body["id"]
        assert request.headers["content-type"] == "application/json"
        assert request.path == "/hooks/lanes"
    for job in (ok, bad, later):
        final = delivered(api, job["id"])
        assert (final["webhook_delivered"], final["webhook_attempts"]) == (True, 1)
        [attempt] = attempts(api, job["id"])
        assert attempt["delivered"] is True and attempt["status_code"] == 200 and attempt["attempt"] == 1
        assert attempt["response_ms"] is not None and attempt["url"] == receiver.url


def test_a_receiver_that_fails_twice_gets_three_attempts_with_growing_gaps_and_one_delivery(
    api: TestClient, workers: WorkerFactory
) -> None:
    with serve([Answer(500), Answer(503), Answer(200)]) as receiver:
        # RQ keeps a retry's time to the whole second and its scheduler looks once a second, so
        # each wait is its planned 3 s or 6 s (+ jitter) give or take a second: apart, not overlapping.
        start_worker(workers, webhook_retry_base_s=3)
        job = submit(api, "demo.echo", {}, webhook_url=receiver.url)

        final = delivered(api, job["id"])

    assert (final["webhook_delivered"], final["webhook_attempts"]) == (True, 3)
    assert len(receiver.received) == 3
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    first_gap = receiver.received[1].at - receiver.received[0].at
    second_gap = receiver.received[2].at - receiver.received[1].at
    assert 2 <= first_gap < second_gap, (first_gap, second_gap)
    tried = attempts(api, job["id"])
    assert [(a["attempt"], a["status_code"], a["delivered"]) for a in tried] == [
        (1, 500, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert [a["error"] for a in tried[:2]] == ["answered 500", "answered 503"]


def test_a_4xx_answer_is_not_retried(api: TestClient, workers: WorkerFactory, redis: Any) -> None:
    with serve([Answer(400)]) as receiver:
        start_worker(workers)
        job = submit(api, "demo.echo", {}, webhook_url=receiver.url)

        final = delivered(api, job["id"])

    assert (final["webhook_delivered"], final["webhook_attempts"]) == (False, 1)
    assert len(receiver.received) == 1
    assert [a["error"] for a in attempts(api, job["id"])] == ["answered 400"]
    assert redis.zcard("rq:scheduled:webhooks") == 0  # no retry waits


def test_a_redirect_is_not_followed(api: TestClient, workers: WorkerFactory) -> None:
    with serve() as elsewhere, serve([Answer(302, headers={"location": elsewhere.url})]) as receiver:
        start_worker(workers)
        job = submit(api, "demo.echo", {}, webhook_url=receiver.url)

        final = delivered(api, job["id"])

        assert elsewhere.received == []
    assert (final["webhook_delivered"], final["webhook_attempts"]) == (False, 1)
    [attempt] = attempts(api, job["id"])
    assert attempt["status_code"] == 302 and attempt["error"].startswith("redirect not followed")


def test_a_receiver_slower_than_the_timeout_is_recorded_as_a_timeout(
    api: TestClient, workers: WorkerFactory
) -> None:
    with serve([Answer(200, delay_s=3)]) as receiver:
        start_worker(workers, webhook_max_retries=0)
        job = submit(api, "demo.echo", {}, webhook_url=receiver.url)

        final = delivered(api, job["id"])

    assert (final["webhook_delivered"], final["webhook_attempts"]) == (False, 1)
    [attempt] = attempts(api, job["id"])
    assert attempt["error"] == "timed out after 1 s" and attempt["status_code"] is None
    assert 900 <= attempt["response_ms"] < 3000


def test_a_receiver_down_for_a_while_gets_the_event_when_it_recovers_under_the_same_id(
    api: TestClient, workers: WorkerFactory
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks/lanes"
    start_worker(workers, webhook_max_retries=5)
    job = submit(api, "demo.echo", {}, webhook_url=url)
    wait_for(lambda: len(attempts(api, job["id"])) >= 2, timeout_s=30, message="two failed attempts")

    with serve(port=port) as receiver:
        final = delivered(api, job["id"])

    assert final["webhook_delivered"] is True
    tried = attempts(api, job["id"])
    assert len({a["event_id"] for a in tried}) == 1
    assert [a["delivered"] for a in tried] == [False] * (len(tried) - 1) + [True]
    assert "ConnectError" in tried[0]["error"]
    assert [r.headers["webhook-id"] for r in receiver.received] == [tried[0]["event_id"]]


def test_a_redelivery_sends_the_same_event_again(
    api: TestClient, receiver: Receiver, workers: WorkerFactory
) -> None:
    start_worker(workers)
    job = submit(api, "demo.echo", {}, webhook_url=receiver.url)
    delivered(api, job["id"])

    again = api.post(f"/api/v1/jobs/{job['id']}/webhooks/redeliver")

    assert again.status_code == 202, again.text
    wait_for(lambda: len(receiver.received) == 2, timeout_s=20, message="the redelivery")
    first, second = (json.loads(r.body) for r in receiver.received)
    assert first == second and again.json()["event_id"] == first["id"]
    assert receiver.received[0].headers["webhook-id"] == receiver.received[1].headers["webhook-id"]


def test_after_a_rotation_both_secrets_sign_until_the_grace_period_ends(
    api: TestClient, receiver: Receiver, workers: WorkerFactory
) -> None:
    old = secret(api)
    rotated = api.post("/api/v1/webhooks/secret/rotate")
    assert rotated.status_code == 200 and rotated.json()["previous_valid_until"] is not None
    new = rotated.json()["secret"]
    start_worker(workers)

    job = submit(api, "demo.echo", {}, webhook_url=receiver.url)
    wait_for(lambda: receiver.received, timeout_s=20, message="the webhook")

    [request] = receiver.received
    assert new != old and len(request.headers["webhook-signature"].split(" ")) == 2
    assert verified(api, request, new)["data"]["job"] == job["id"]
    assert verified(api, request, old)["data"]["job"] == job["id"]


def test_a_job_without_a_webhook_sends_nothing_and_its_retries_send_one_failure(
    api: TestClient, receiver: Receiver, workers: WorkerFactory
) -> None:
    start_worker(workers)
    quiet = submit(api, "demo.echo", {})
    flaky = submit(api, "demo.fail", {}, max_retries=1, webhook_url=receiver.url)

    wait_for_status(api, quiet["id"], "succeeded")
    delivered(api, flaky["id"])

    assert row(api, quiet["id"])["webhook_delivered"] is None
    assert [json.loads(r.body)["event"] for r in receiver.received] == ["job.failed"]
    assert json.loads(receiver.received[0].body)["data"]["attempts"] == 2
