"""Stopping a worker: a stop command that finds no work-horse kills nothing, and a SIGTERM is never lost."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from unittest import mock

import fakeredis
import pytest
from redis import Redis
from rq.command import handle_stop_job_command

from backend.queues import LanesJob, all_queues
from worker import worker as worker_module
from worker.worker import LanesWorker, PromptScheduler


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Process groups `os.killpg` was asked to signal (recorded, never sent: the test run is in one)."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: calls.append((pgid, sig)))
    return calls


def worker_on(redis: Redis) -> LanesWorker:
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


def test_an_idle_worker_stops_even_when_the_code_its_stop_request_interrupted_swallows_it(
    fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Idle, RQ raises StopRequested from the SIGTERM handler into whatever the worker is running;
    # a broad `except` there (a library's wrapping, a task's hook) must not cost the stop.
    worker = worker_on(fake_redis)
    worker.mirror = mock.MagicMock()
    dequeues: list[object] = []
    monkeypatch.setattr(worker, "dequeue_job_and_maintain_ttl", lambda *args: dequeues.append(args))

    def maintenance_that_swallows() -> None:
        with contextlib.suppress(Exception):
            worker.request_stop(signal.SIGTERM, None)

    monkeypatch.setattr(worker, "run_maintenance_tasks", maintenance_that_swallows)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    try:
        worker.work(burst=False)
    finally:  # the worker installed its handlers in this test process
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    assert dequeues == []  # it stopped at the loop's next look instead of waiting for work


def test_a_process_forked_from_the_worker_ends_on_sigterm_before_it_has_handlers_of_its_own(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # RQ's scheduler process and a work-horse are forks of the worker and inherit its handler
    # until they install their own; a worker that stops at once (a burst with nothing to do)
    # signals its scheduler within that window, and waited for it forever.
    worker = worker_on(fake_redis)
    pid = os.fork()
    if pid == 0:  # the fork: as RQ's scheduler process right after it started
        try:
            worker.request_stop(signal.SIGINT, None)  # the Ctrl-C is the worker's to handle
            worker.request_stop(signal.SIGTERM, None)
        finally:
            os._exit(3)  # reached only if the SIGTERM did not end it
    _, status = os.waitpid(pid, 0)

    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert not worker._stop_requested  # the worker itself was asked nothing


def _deaf_to_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def test_a_scheduler_process_that_ignores_sigterm_is_killed_so_the_worker_still_ends(
    fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_on(fake_redis)
    worker.scheduler = mock.MagicMock()
    deaf = multiprocessing.get_context("fork").Process(target=_deaf_to_sigterm)
    deaf.start()
    worker.scheduler._process = deaf
    monkeypatch.setattr(worker_module, "SCHEDULER_STOP_S", 0.5)
    time.sleep(0.2)  # its handler in place

    worker.stop_scheduler()

    assert not deaf.is_alive() and deaf.exitcode == -signal.SIGKILL


def test_a_burst_worker_forks_no_scheduler_process(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # RQ moves a burst's due jobs once, in the worker; a scheduler process forked on top of that
    # would be stopped moments later (see above).
    worker = worker_on(redis)
    worker.mirror = mock.MagicMock()
    forked: list[object] = []
    monkeypatch.setattr(PromptScheduler, "start", lambda scheduler: forked.append(scheduler))

    worker._start_scheduler(burst=True)  # as RQ's `work(burst=True, with_scheduler=True)` does
    worker.run_maintenance_tasks()  # the first poll's, which takes over free scheduler locks

    assert forked == []
    assert worker.scheduler is not None and worker.scheduler._process is None
