"""What a writer to Redis cannot make a worker do: a job hash forged to name a callback or RQ's
own webhooks still runs only its registered task, and reaches no other code and no address."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from tests import receiver
from tests.helpers import WorkerFactory
from tests.integration import reconcile_tasks
from tests.integration.support import submit, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def test_a_forged_callback_or_rq_webhook_in_a_job_hash_is_ignored(
    api_factory: Callable[..., TestClient], workers: WorkerFactory, redis: Redis
) -> None:
    api = api_factory(task_modules=reconcile_tasks.MODULE)
    job_id = submit(api, "demo.echo", {"n": 1})["id"]
    mark = f"{reconcile_tasks.MODULE}.leave_a_mark"
    with receiver.serve() as hook:
        redis.hset(
            f"rq:job:{job_id}",
            mapping={
                "success_callback_name": mark,
                "failure_callback_name": mark,
                "stopped_callback_name": mark,
                "webhooks": json.dumps([{"url": hook.url, "job_status": "finished", "method": "POST"}]),
            },
        )

        workers.start(task_modules=reconcile_tasks.MODULE)
        wait_for_status(api, job_id, "succeeded")
        follower = submit(api, "demo.echo", {"n": 2})["id"]  # one more job: the first one's end is behind us
        wait_for_status(api, follower, "succeeded")

        assert redis.get("forged-callback-ran") is None
        assert hook.received == []
