"""The image's commands run outside Docker (no engine runs here): the entry point and healthcheck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.devredis import free_port
from tests.conftest import tenant_key
from tests.helpers import ROOT, lanes_env, wait_for

pytestmark = pytest.mark.integration

ENTRYPOINT = ["sh", str(ROOT / "docker" / "entrypoint.sh")]
HEALTHCHECK = [sys.executable, str(ROOT / "docker" / "healthcheck.py")]


def image_env(**settings: Any) -> dict[str, str]:
    """As in the image: the project's Python first on PATH, where the entry point finds `python`."""
    env = lanes_env(**settings)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_entrypoint_runs_the_scheduler_and_its_healthcheck_follows_it(
    redis_url: str, tmp_path: Path
) -> None:
    env = image_env(redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'lanes.db'}")
    subprocess.run([*ENTRYPOINT, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True, timeout=60)

    def healthy() -> bool:
        check = subprocess.run(
            [*HEALTHCHECK, "scheduler"], env=env, cwd=ROOT, capture_output=True, timeout=30
        )
        return check.returncode == 0

    assert not healthy()
    log = (tmp_path / "scheduler.log").open("wb")
    scheduler = subprocess.Popen(
        [*ENTRYPOINT, "scheduler"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(healthy, timeout_s=30, message="the scheduler's healthcheck to pass")
        scheduler.send_signal(signal.SIGTERM)
        assert scheduler.wait(timeout=15) == 0
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
    assert not healthy()


def test_the_entrypoint_runs_one_scheduler_pass_with_burst(redis_url: str, tmp_path: Path) -> None:
    env = image_env(redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'lanes.db'}")
    subprocess.run([*ENTRYPOINT, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True, timeout=60)

    done = subprocess.run(
        [*ENTRYPOINT, "scheduler", "--burst"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Registering death" in done.stderr


def test_the_entrypoint_migrates_serves_the_api_and_runs_a_worker(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = image_env(redis_url=redis_url, database_url=database_url, api_port=port, api_host="127.0.0.1")
    migrated = subprocess.run([*ENTRYPOINT, "migrate"], env=env, cwd=ROOT, capture_output=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    headers = {"Authorization": f"Bearer {tenant_key(database_url, 'acme')}"}
    log = (tmp_path / "api.log").open("wb")
    api = subprocess.Popen([*ENTRYPOINT, "api"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(f"{base}/readyz") == 200, timeout_s=30, message="the API to be ready")
        submitted = httpx.post(f"{base}/api/v1/jobs", json={"task": "demo.echo"}, headers=headers, timeout=10)
        assert submitted.status_code == 202, submitted.text

        worker = subprocess.run(
            [*ENTRYPOINT, "worker", "--burst"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )

        assert worker.returncode == 0, worker.stderr
        job = httpx.get(f"{base}/api/v1/jobs/{submitted.json()['id']}", headers=headers, timeout=10).json()
        assert job["status"] == "succeeded"
        # exec'd: SIGTERM reaches uvicorn itself, which shuts down cleanly and then ends by the signal
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=15) in (0, -signal.SIGTERM)
        assert "Finished server process" in (tmp_path / "api.log").read_text()
    finally:
        if api.poll() is None:
            api.kill()


def test_the_entrypoint_refuses_an_unknown_command() -> None:
    done = subprocess.run([*ENTRYPOINT, "wrker"], cwd=ROOT, capture_output=True, text=True, timeout=10)

    assert done.returncode == 64
    assert "unknown command: wrker" in done.stderr and "usage:" in done.stderr


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0
