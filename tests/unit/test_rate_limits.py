"""Rate limits per tenant (per client address before a key is verified), counted on the private redis-server.

Two API processes sharing one Redis are in tests/integration/test_api_processes.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from starlette.requests import Request

from backend.api.ratelimit import RateLimits
from backend.config import Settings
from backend.enums import Plan, Role
from backend.main import create_app
from backend.queues import make_redis
from tests.conftest import tenant_key

ECHO = {"task": "demo.echo", "params": {}}
LIMITS = {
    "rate_limit_enabled": True,
    "rate_limit_submit": "3/minute",
    "rate_limit_batch": "2/minute",
    "rate_limit_default": "5/minute",
}
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@pytest.fixture
def limited(make_settings: Any, redis_url: str) -> Callable[..., TestClient]:
    """`limited(**settings)`: a client of the API with small rate limits, on the private Redis."""
    clients: list[TestClient] = []

    def build(redis: Redis | None = None, **overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(redis_url, **{**LIMITS, **overrides}), redis=redis))
        clients.append(client.__enter__())
        return client

    yield build  # type: ignore[misc]
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(limited: Callable[..., TestClient]) -> TestClient:
    return limited()


@pytest.fixture
def alice(database_url: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant_key(database_url, 'alice', role=Role.MEMBER, plan=Plan.PRO)}"}


@pytest.fixture
def bob(database_url: str) -> dict[str, str]:
    return {"X-API-Key": tenant_key(database_url, "bob", role=Role.MEMBER, plan=Plan.PRO)}


def test_submits_past_the_limit_get_429_with_a_true_retry_after(client: TestClient, alice: dict) -> None:
    answers = [client.post("/api/v1/jobs", json=ECHO, headers=alice) for _ in range(4)]

    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["x-ratelimit-limit"] for a in answers} == {"3"}
    refused = answers[-1]
    retry_after = int(refused.headers["retry-after"])
    assert 55 <= retry_after <= 60
    assert refused.json() == {
        "detail": f"Rate limit exceeded. Retry after {retry_after} seconds.",
        "code": "rate_limited",
    }
    assert int(refused.headers["x-ratelimit-reset"]) == retry_after
    for answer in answers:
        assert 1 <= int(answer.headers["x-ratelimit-reset"]) <= 60


def test_each_tenant_has_its_own_count(client: TestClient, alice: dict, bob: dict) -> None:
    for _ in range(3):
        client.post("/api/v1/jobs", json=ECHO, headers=alice)

    assert client.post("/api/v1/jobs", json=ECHO, headers=alice).status_code == 429
    assert client.post("/api/v1/jobs", json=ECHO, headers=bob).status_code == 202


def test_submits_batches_and_other_calls_are_counted_apart(client: TestClient, alice: dict) -> None:
    submits = [client.post("/api/v1/jobs", json=ECHO, headers=alice).status_code for _ in range(4)]
    batches = [
        client.post("/api/v1/jobs/batch", json={"jobs": [ECHO]}, headers=alice).status_code for _ in range(3)
    ]
    reads = [client.get("/api/v1/jobs", headers=alice) for _ in range(6)]

    assert submits == [202, 202, 202, 429]
    assert batches == [202, 202, 429]
    assert [r.status_code for r in reads] == [200] * 5 + [429]
    assert reads[0].headers["x-ratelimit-limit"] == "5"


def test_a_schedules_run_counts_as_a_submit(client: TestClient, alice: dict) -> None:
    schedule = client.post(
        "/api/v1/schedules", json={"name": "n", "cron": "0 3 * * *", **ECHO}, headers=alice
    ).json()
    client.post("/api/v1/jobs", json=ECHO, headers=alice)
    client.post("/api/v1/jobs", json=ECHO, headers=alice)

    runs = [client.post(f"/api/v1/schedules/{schedule['id']}/run", headers=alice) for _ in range(2)]

    assert [r.status_code for r in runs] == [202, 429]


def test_every_counted_answer_carries_the_headers_errors_included(client: TestClient, alice: dict) -> None:
    missing = client.get("/api/v1/jobs/nope", headers=alice)
    invalid = client.post("/api/v1/jobs", json={"task": "no.such.task"}, headers=alice)

    assert (missing.status_code, invalid.status_code) == (404, 422)
    for answer in (missing, invalid):
        assert all(name in answer.headers for name in RATE_HEADERS), answer.headers


def test_health_is_not_limited(client: TestClient) -> None:
    answers = [client.get("/api/v1/health") for _ in range(8)] + [client.get("/healthz") for _ in range(8)]

    assert all(a.status_code in (200, 503) for a in answers)
    assert not any("x-ratelimit-limit" in a.headers for a in answers)


def test_bad_keys_are_counted_by_client_address_and_refused_with_429_before_long(
    client: TestClient, alice: dict
) -> None:
    bad = {"Authorization": "Bearer lanes_000000000000_" + "A" * 43}

    answers = [client.get("/api/v1/jobs", headers=bad) for _ in range(6)]

    assert [a.status_code for a in answers] == [401] * 5 + [429]
    assert answers[0].headers["x-ratelimit-remaining"] == "4"
    assert answers[-1].json()["code"] == "rate_limited"
    # A good key from the same address is counted by its tenant, not by the address.
    assert client.get("/api/v1/jobs", headers=alice).status_code == 200


def test_the_limits_are_settings(limited: Callable[..., TestClient], alice: dict) -> None:
    client = limited(rate_limit_submit="1/minute")

    answers = [client.post("/api/v1/jobs", json=ECHO, headers=alice).status_code for _ in range(2)]

    assert answers == [202, 429]


def test_with_rate_limits_off_nothing_is_counted(limited: Callable[..., TestClient], alice: dict) -> None:
    client = limited(rate_limit_enabled=False, rate_limit_submit="1/minute")

    answers = [client.post("/api/v1/jobs", json=ECHO, headers=alice) for _ in range(3)]

    assert {a.status_code for a in answers} == {202}
    assert "x-ratelimit-limit" not in answers[0].headers


@pytest.mark.parametrize("setting", ["fast", "10/fortnight", "minute/10", ""])
def test_a_limit_that_is_not_a_rate_is_refused_at_start(setting: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        Settings.model_validate({"rate_limit_submit": setting})


def test_when_the_limiters_redis_is_down_the_api_answers_and_counts_it(
    limited: Callable[..., TestClient], alice: dict, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis refuses every call, so only routes that answer from SQL can succeed: stats and credits.
    client = limited(redis=make_redis("redis://127.0.0.1:1/0"))
    caplog.set_level(logging.WARNING, logger="backend.api.ratelimit")

    answers = [client.get("/api/v1/jobs/stats", headers=alice) for _ in range(7)]
    bad_key = client.get("/api/v1/jobs/stats", headers={"X-API-Key": "nope"})

    assert [a.status_code for a in answers] == [200] * 7  # fail open: more than the limit of 5
    assert not any("x-ratelimit-limit" in a.headers for a in answers)
    assert bad_key.status_code == 401
    rate_limits: RateLimits = client.app.state.lanes.rate_limits  # type: ignore[attr-defined]
    assert rate_limits.failed_open == 8
    logged = [r for r in caplog.records if "rate limits not enforced" in r.getMessage()]
    assert len(logged) == 1  # once a minute, not once a call


def test_the_counts_live_in_redis_under_one_prefix(client: TestClient, alice: dict, redis: Redis) -> None:
    client.post("/api/v1/jobs", json=ECHO, headers=alice)

    keys = sorted(key.decode() for key in redis.scan_iter(match="lanes:ratelimit:*"))

    assert len(keys) == 1 and keys[0].startswith("lanes:ratelimit:LIMITER/submit/tenant:")


# -- the client's address ------------------------------------------------------------------------


def request_from(peer: str, forwarded: list[str] | None = None) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded or []]
    return Request(
        {"type": "http", "client": (peer, 40000), "headers": headers, "method": "GET", "path": "/"}
    )


@pytest.fixture
def limits_behind(fake_redis: Any) -> Iterator[Callable[[str], RateLimits]]:
    def build(proxies: str) -> RateLimits:
        return RateLimits(Settings.model_validate({"trusted_proxies": proxies}), fake_redis)

    yield build


@pytest.mark.parametrize(
    ("proxies", "peer", "forwarded", "client"),
    [
        ("", "203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # no proxy trusted: the header is ignored
        ("10.0.0.0/8", "203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # the peer is not a proxy
        ("10.0.0.0/8", "10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.0/8", "10.1.2.3", ["6.6.6.6, 198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # spoofed first hop
        ("10.0.0.0/8", "10.1.2.3", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # two headers
        ("10.0.0.0/8", "10.1.2.3", [], "10.1.2.3"),
        ("10.0.0.0/8", "10.1.2.3", ["not-an-address"], "10.1.2.3"),
        ("10.0.0.0/8, ::1", "::1", ["2001:db8::5"], "2001:db8::5"),
        ("10.0.0.0/8", "10.1.2.3", ["10.4.4.4"], "10.4.4.4"),  # only proxies: the farthest one
    ],
)
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    limits_behind: Callable[[str], RateLimits], proxies: str, peer: str, forwarded: list[str], client: str
) -> None:
    assert limits_behind(proxies).client_address(request_from(peer, forwarded)) == client


def test_a_trusted_proxy_that_is_not_a_network_is_refused_at_start() -> None:
    with pytest.raises(ValueError):
        Settings.model_validate({"trusted_proxies": "10.0.0.0/8, proxy.example"})
