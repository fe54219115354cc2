"""A stop command that finds no work-horse must not kill the worker's own process group."""

from __future__ import annotations

import os

import fakeredis
import pytest
from rq.command import handle_stop_job_command

from backend.queues import LanesJob, all_queues
from worker.worker import LanesWorker


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Process groups `os.killpg` was asked to signal (recorded, never sent: the test run is in one)."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: calls.append((pgid, sig)))
    return calls


def worker_on(redis: fakeredis.FakeRedis) -> LanesWorker:
    return LanesWorker(all_queues(redis), connection=redis, job_class=LanesJob, name="w-stop")


def test_a_second_stop_command_for_a_job_whose_horse_is_gone_kills_nothing(
    fake_redis: fakeredis.FakeRedis, killed: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_on(fake_redis)
    monkeypatch.setattr(worker, "get_current_job_id", lambda: "job-1")  # RQ still names the job
    worker._horse_pid = 0  # the horse was reaped after the first stop

    handle_stop_job_command(worker, {"job_id": "job-1"})

    # RQ alone would signal os.getpgid(0): the worker's own group, and its parent's with it.
    assert killed == []


def test_a_stop_command_for_a_running_horse_still_kills_it(
    fake_redis: fakeredis.FakeRedis, killed: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_on(fake_redis)
    monkeypatch.setattr(worker, "get_current_job_id", lambda: "job-1")
    monkeypatch.setattr(os, "getpgid", lambda pid: pid + 1_000_000)
    worker._horse_pid = 4321

    handle_stop_job_command(worker, {"job_id": "job-1"})

    assert [pgid for pgid, _ in killed] == [4321 + 1_000_000]
    assert worker._stopped_job_id == "job-1"
