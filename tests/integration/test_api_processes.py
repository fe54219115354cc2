"""Two real API processes sharing one Redis and one database: rate limits and quotas hold across both."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend import tenants
from backend.enums import Plan, Role
from backend.models import JobRow
from tests.conftest import tenant_key
from tests.helpers import ApiFactory

pytestmark = pytest.mark.integration

ECHO = {"task": "demo.echo", "params": {}}


def test_rate_limits_count_calls_to_every_api_process_together(apis: ApiFactory, database_url: str) -> None:
    first, second = (apis.start(rate_limit_submit="4/minute") for _ in range(2))
    headers = {"Authorization": f"Bearer {tenant_key(database_url, 'alice', role=Role.MEMBER)}"}

    answers = [
        httpx.post(f"{api.url}/api/v1/jobs", json=ECHO, headers=headers, timeout=10)
        for api in (first, second, first, second, first, second)
    ]

    assert [a.status_code for a in answers] == [202, 202, 202, 202, 429, 429]
    assert [a.headers["x-ratelimit-remaining"] for a in answers[:4]] == ["3", "2", "1", "0"]
    assert answers[-1].json()["code"] == "rate_limited"
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60


def test_a_burst_at_the_last_credit_through_two_api_processes_admits_exactly_one(
    apis: ApiFactory, database_url: str, session: Session
) -> None:
    # The submit rate limit (10 a minute) must not be what refuses the burst.
    processes = [apis.start(rate_limit_submit="100/minute") for _ in range(2)]
    key = tenant_key(database_url, "alice", role=Role.MEMBER, plan=Plan.FREE)  # one job a day
    headers = {"Authorization": f"Bearer {key}"}
    start = threading.Barrier(12)
    answers: list[Any] = []

    def submit(url: str) -> None:
        start.wait()
        answers.append(httpx.post(f"{url}/api/v1/jobs", json=ECHO, headers=headers, timeout=30))

    threads = [threading.Thread(target=submit, args=(processes[n % 2].url,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202] + [429] * 11, [a.text for a in answers if a.status_code not in (202, 429)]
    assert {a.json()["code"] for a in answers if a.status_code == 429} == {"quota_exceeded"}
    tenant = tenants.get_tenant(session=session, name_or_id="alice")
    count = session.scalar(select(func.count()).select_from(JobRow).where(JobRow.tenant_id == tenant.id))
    assert count == 1
    credits = httpx.get(f"{processes[0].url}/api/v1/credits", headers=headers, timeout=10).json()
    assert (credits["daily"]["used"], credits["daily"]["remaining"]) == (1, 0)
