"""The commands a newcomer runs first: `make demo`, `make up` / `make down`, and migrations."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from backend.devredis import answers, free_port
from backend.migrate import downgrade, upgrade
from tests.helpers import ROOT, lanes_env, wait_for

pytestmark = pytest.mark.integration


def test_the_demo_runs_the_platform_and_every_example_job_ends_as_expected(
    redis_url: str, tmp_path: Path
) -> None:
    env = lanes_env(redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'demo.db'}", retry_base_s=1)

    demo = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--exit-when-done", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "Lanes is running." in out and "/api/v1/jobs" in out and "/docs" in out
    assert re.search(r"schedule +http://\S+/api/v1/schedules/[0-9a-f]{32} ", out), out
    assert "• scheduler: pid" in out
    assert re.search(
        r"API key of tenant 'demo' \(unlimited plan\), made for this demo: lanes_[0-9a-f]{12}_\S{43}\n", out
    )
    assert "demo.flaky  normal succeeded 100% attempt 2" in out
    assert "demo.fail   low    failed" in out
    assert "stopped everything the demo started" in out
    high_start = out.index("demo.sleep  high   started")
    low_start = out.index("demo.sleep  low    started")
    assert high_start < low_start, "the high job should start before the low one"


def run_devredis(action: str, *, cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = lanes_env(redis_url=url, database_url="sqlite:///unused.db")
    return subprocess.run(
        [sys.executable, "-m", "backend.devredis", action],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_up_starts_a_redis_with_aof_under_dot_lanes_and_make_down_stops_only_that(
    tmp_path: Path,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    started = run_devredis("up", cwd=tmp_path, url=url)
    try:
        assert started.returncode == 0, started.stderr
        assert "started" in started.stdout
        assert answers(url)
        assert (tmp_path / ".lanes" / "redis" / "redis.pid").exists()
        assert (tmp_path / ".lanes" / "redis" / "appendonlydir").exists() or list(
            (tmp_path / ".lanes" / "redis").glob("appendonly*")
        )
        reused = run_devredis("up", cwd=tmp_path, url=url)
        assert "reusing" in reused.stdout
    finally:
        stopped = run_devredis("down", cwd=tmp_path, url=url)

    assert "stopped redis-server" in stopped.stdout
    assert "nothing to stop" in run_devredis("down", cwd=tmp_path, url=url).stdout


def test_make_down_leaves_alone_a_redis_it_did_not_start(redis_url: str, tmp_path: Path) -> None:
    assert "reusing" in run_devredis("up", cwd=tmp_path, url=redis_url).stdout
    assert "nothing to stop" in run_devredis("down", cwd=tmp_path, url=redis_url).stdout
    assert answers(redis_url)


def test_migrations_go_down_to_nothing_and_up_again(database_url: str) -> None:
    downgrade(database_url, revision="base", quiet=True)
    engine = create_engine(database_url)
    assert not {"jobs", "schedules"} & set(inspect(engine).get_table_names())

    upgrade(database_url, quiet=True)

    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
    schedule_indexes = {i["name"] for i in inspect(engine).get_indexes("schedules")}
    engine.dispose()
    assert {"id", "status", "progress", "attempts", "next_retry_at", "worker"} <= columns
    assert {
        "ix_jobs_tenant_status_created",
        "ix_jobs_status_priority_created",
        "ix_jobs_task_status_created_run",
    } <= indexes
    assert "ix_schedules_enabled_next_run" in schedule_indexes


def test_ctrl_c_stops_the_demo_and_everything_it_started_without_cutting_a_job_off(tmp_path: Path) -> None:
    redis_port = free_port()  # nothing answers there, so the demo starts its own redis-server
    env = lanes_env(
        redis_url=f"redis://127.0.0.1:{redis_port}/0", database_url=f"sqlite:///{tmp_path / 'd.db'}"
    )
    demo = subprocess.Popen(
        [sys.executable, "-m", "scripts.demo", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as in a terminal
    )
    assert demo.stdout is not None
    lines: list[str] = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if "started" in line and "demo.sleep" in line:
                break
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    out = "".join(lines) + rest

    assert demo.returncode == 0, out
    assert "started redis-server" in out and "stopped everything the demo started" in out
    pids = [int(match) for match in re.findall(r": pid (\d+),", out)]
    assert len(pids) == 4  # the API, the scheduler and two workers
    for pid in pids:
        wait_for(lambda pid=pid: not _alive(pid), timeout_s=10, message=f"pid {pid} to be gone")
    assert not answers(f"redis://127.0.0.1:{redis_port}/0")
    # The workers were asked to stop once, so they shut down warm: no job was cut off mid-run.
    with sqlite3.connect(tmp_path / "d.db") as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    assert "started" not in statuses and statuses.get("succeeded", 0) >= 1, statuses


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
