"""The image's commands run outside Docker (no engine runs here): the entry point and healthcheck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
