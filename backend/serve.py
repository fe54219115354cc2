"""`python -m backend.serve` (`make api`): serve the API on LANES_API_HOST:LANES_API_PORT with uvicorn.

`LANES_API_PROCESSES` processes share the port (uvicorn's workers; 0: one per CPU core it may use,
counting a container's CPU limit). One Python process runs its requests on one core at a time, so
more cores need more processes; each builds its own app, connections and pools. uvicorn takes uvloop
and httptools, which the project installs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import uvicorn

from backend.config import Settings, get_settings

#: Where Linux says how much CPU time this process's control group may use (v2, then v1).
CGROUP = Path("/sys/fs/cgroup")


def process_count(settings: Settings, cgroup: Path = CGROUP) -> int:
    """How many API processes to start: the setting, or one per CPU core this process may use.

    The cores are those it may run on, capped by its control group's CPU quota: a container
    limited to 2 CPUs on a 64-core host starts 2 processes, not 64 (each with its own pools of
    database connections).
    """
    if settings.api_processes:
        return settings.api_processes
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPUs' worth of time the control group may use (`cpu.max`, or v1's CFS quota); None: no limit."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # cgroup v2: "200000 100000"
    except (OSError, ValueError):
        try:  # cgroup v1
            quota = (cgroup / "cpu/cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):  # unreadable: as if there were no limit
        return None


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "backend.main:app",
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        workers=process_count(settings),
    )


if __name__ == "__main__":
    main()
