"""The Python client and the `lanes` command against a real API process and real workers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from backend.devredis import free_port
from lanes import client as api
from lanes.cli import main
from tests.conftest import tenant_key
from tests.helpers import ROOT, ApiFactory, WorkerFactory, lanes_env

pytestmark = pytest.mark.integration


@pytest.fixture
def url(apis: ApiFactory) -> str:
    return apis.start(rate_limit_default="10000/minute", rate_limit_submit="10000/minute", retry_base_s=1).url


@pytest.fixture
def key(database_url: str) -> str:
    return tenant_key(database_url, "operator")


@pytest.fixture
def lanes(url: str, key: str) -> Iterator[api.Lanes]:
    with api.Lanes(url, key) as client:
        yield client


# -- the client ------------------------------------------------------------------------------------


def test_the_client_submits_waits_lists_cancels_and_retries(lanes: api.Lanes, workers: WorkerFactory) -> None:
    workers.start()
    ok = lanes.submit("demo.echo", {"report": "daily"}, priority="high")
    done = lanes.wait(ok["id"], timeout_s=30)
    bad = lanes.submit("demo.fail", max_retries=0)
    with pytest.raises(api.JobFailed) as failed:
        lanes.wait(bad["id"], timeout_s=30)
    later = lanes.submit("demo.echo", delay_s=3600)
    lanes.cancel(later["id"])
    with pytest.raises(api.JobCancelled):
        lanes.wait(later["id"], timeout_s=5)
    waiting = lanes.submit("demo.echo", delay_s=3600)
    with pytest.raises(api.WaitTimeout) as timed_out:
        lanes.wait(waiting["id"], timeout_s=0.5)

    assert done["status"] == "succeeded" and done["result"] == {"report": "daily"}
    assert failed.value.job["status"] == "failed" and "always fails" in failed.value.job["error"]
    assert timed_out.value.job["status"] == "scheduled"
    assert lanes.retry(bad["id"])["status"] in ("queued", "started")
    every = list(lanes.list(page_size=2))
    assert [j["id"] for j in every] == [waiting["id"], later["id"], bad["id"], ok["id"]]
    assert [j["id"] for j in lanes.list(status="cancelled")] == [later["id"]]


def test_the_api_errors_are_typed_with_their_code(url: str, lanes: api.Lanes) -> None:
    with pytest.raises(api.NotFound) as missing:
        lanes.get("no-such-job")
    with pytest.raises(api.InvalidRequest) as unknown:
        lanes.submit("no.such.task")
    with pytest.raises(api.Unauthorized):
        api.Lanes(url, "lanes_000000000000_" + "A" * 43).get("x")
    with pytest.raises(api.ApiUnreachable):
        api.Lanes(f"http://127.0.0.1:{free_port()}", "k").get("x")

    assert (missing.value.status, missing.value.code) == (404, "job_not_found")
    assert unknown.value.code == "unknown_task"


def test_the_async_client_does_the_same(url: str, key: str, workers: WorkerFactory) -> None:
    workers.start()

    async def story() -> tuple[dict[str, Any], list[str]]:
        async with api.AsyncLanes(url, key) as lanes:
            job = await lanes.submit("demo.echo", {"n": 1})
            done = await lanes.wait(job["id"], timeout_s=30)
            return done, [j["id"] async for j in lanes.list()]

    done, ids = asyncio.run(story())

    assert done["status"] == "succeeded" and done["id"] in ids


def test_a_rate_limited_call_is_retried_after_retry_after_when_asked() -> None:
    limited = {"detail": "Rate limit exceeded. Retry after 0 seconds.", "code": "rate_limited"}
    answers = [
        httpx.Response(429, json=limited, headers={"retry-after": "0"}),
        httpx.Response(202, json={"id": "j1", "status": "queued"}),
    ]
    transport = httpx.MockTransport(lambda request: answers.pop(0))

    with api.Lanes("http://lanes.test", "k", retry_rate_limited=True, transport=transport) as lanes:
        job = lanes.submit("demo.echo")
    with pytest.raises(api.RateLimited) as refused:
        quota = httpx.Response(
            429, json={"detail": "Rate limit exceeded.", "code": "rate_limited"}, headers={"retry-after": "7"}
        )
        api.Lanes("http://lanes.test", "k", transport=httpx.MockTransport(lambda r: quota)).submit(
            "demo.echo"
        )

    assert job["id"] == "j1" and answers == []
    assert refused.value.retry_after_s == 7


# -- the command -----------------------------------------------------------------------------------


def lanes_cli(url: str, key: str | None, *args: str) -> Any:
    env = {"LANES_URL": url, "LANES_API_KEY": key or "", "LANES_CONFIG": "/nonexistent"}
    return CliRunner().invoke(main, list(args), env=env)


def test_the_command_waits_for_a_job_and_its_exit_status_says_how_it_ended(
    url: str, key: str, workers: WorkerFactory
) -> None:
    workers.start()

    ok = lanes_cli(
        url, key, "submit", "demo.echo", "n=3", "flag=true", "name=ann", "--priority", "high", "--wait"
    )
    as_json = lanes_cli(url, key, "--json", "submit", "demo.echo", "n=1", "--wait")
    failed = lanes_cli(url, key, "submit", "demo.fail", "--max-retries", "0", "--wait")
    later = json.loads(lanes_cli(url, key, "--json", "submit", "demo.echo", "--delay", "3600").output)
    lanes_cli(url, key, "cancel", later["id"])
    cancelled = lanes_cli(url, key, "watch", later["id"])
    timed_out = lanes_cli(
        url,
        key,
        "watch",
        json.loads(lanes_cli(url, key, "--json", "submit", "demo.echo", "--delay", "3600").output)["id"],
        "--timeout",
        "0.3",
    )

    assert ok.exit_code == 0 and "succeeded" in ok.output, ok.output
    assert json.loads(as_json.output)["result"] == {"n": 1}
    assert failed.exit_code == 1 and "failed" in failed.output
    assert cancelled.exit_code == 3 and "cancelled" in cancelled.output
    assert timed_out.exit_code == 4
    status = json.loads(lanes_cli(url, key, "--json", "status", later["id"]).output)
    assert status["status"] == "cancelled"
    listed = lanes_cli(url, key, "list", "--status", "succeeded")
    assert listed.exit_code == 0 and listed.output.count("demo.echo") == 2 and listed.output.startswith("id")


def test_the_command_reports_the_platform_and_manages_schedules(
    url: str, key: str, workers: WorkerFactory
) -> None:
    workers.start()
    added = json.loads(
        lanes_cli(
            url,
            key,
            "--json",
            "schedules",
            "add",
            "nightly",
            "demo.echo",
            "0 3 * * *",
            "n=1",
            "--tz",
            "Europe/Paris",
        ).output
    )

    paused = json.loads(lanes_cli(url, key, "--json", "schedules", "pause", added["id"]).output)
    ran = json.loads(lanes_cli(url, key, "--json", "schedules", "run", added["id"]).output)
    listed = lanes_cli(url, key, "schedules", "list")
    removed = lanes_cli(url, key, "schedules", "rm", added["id"])
    queues = lanes_cli(url, key, "queues")
    workers_out = lanes_cli(url, key, "workers")
    credits = json.loads(lanes_cli(url, key, "--json", "credits").output)

    assert paused["enabled"] is False and ran["schedule_id"] == added["id"]
    assert "nightly" in listed.output and "Europe/Paris" in listed.output
    assert removed.exit_code == 0
    assert queues.exit_code == 0 and "normal" in queues.output and "webhooks" in queues.output
    assert workers_out.exit_code == 0 and "high,webhooks,normal,low" in workers_out.output
    assert credits["tenant"] == "operator" and credits["daily"]["limit"] is None


def test_bad_arguments_a_missing_key_and_an_unreachable_api_are_one_clear_line(url: str, key: str) -> None:
    no_task = lanes_cli(url, key, "submit")
    bad_status = lanes_cli(url, key, "list", "--status", "bogus")
    bad_param = lanes_cli(url, key, "submit", "demo.echo", "novalue")
    no_key = lanes_cli(url, None, "list")
    refused = lanes_cli(url, key, "status", "no-such-job")
    down = lanes_cli(f"http://127.0.0.1:{free_port()}", key, "list")

    assert {no_task.exit_code, bad_status.exit_code, bad_param.exit_code} == {2}
    assert "is not key=value" in bad_param.output
    assert no_key.exit_code == 7 and no_key.output.startswith("lanes: no API key")
    assert refused.exit_code == 5 and "job_not_found" in refused.output
    assert down.exit_code == 6 and "does not answer" in down.output
    for result in (no_key, refused, down):
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_the_installed_command_runs_as_a_real_process(
    url: str, key: str, workers: WorkerFactory, tmp_path: Path
) -> None:
    workers.start()
    script = Path(sys.executable).with_name("lanes")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lanes"]
    env = {
        "PATH": "/usr/bin:/bin",
        "LANES_URL": url,
        "LANES_API_KEY": key,
        "LANES_CONFIG": str(tmp_path / "none.toml"),
    }

    waited = [*command, "submit", "demo.sleep", "seconds=0.5", "steps=2", "--wait"]
    done = subprocess.run(waited, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    usage = subprocess.run(
        [*command, "submit"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout
    assert usage.returncode == 2 and "Missing argument" in usage.stderr


def test_lanes_worker_runs_a_worker_like_make_worker(
    lanes: api.Lanes, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    job = lanes.submit("demo.echo", {"n": 1})
    script = Path(sys.executable).with_name("lanes")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lanes"]
    env = lanes_env(redis_url=redis_url, database_url=database_url)

    args = [*command, "worker", "--burst", "--name", "w-cli"]
    burst = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert burst.returncode == 0, burst.stderr
    assert lanes.get(job["id"])["status"] == "succeeded" and lanes.get(job["id"])["worker"] == "w-cli"
