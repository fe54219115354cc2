"""`python -m backend.serve` (`make api`): serve the API on LANES_API_HOST:LANES_API_PORT with uvicorn.

`LANES_API_PROCESSES` processes share the port (uvicorn's workers; 0: one per CPU core). One Python
process runs its requests on one core at a time, so more cores need more processes; each builds its
own app, connections and pools. uvicorn takes uvloop and httptools, which the project installs.
"""

from __future__ import annotations

import os

import uvicorn

from backend.config import Settings, get_settings


def process_count(settings: Settings) -> int:
    """How many API processes to start: the setting, or one per CPU core this process may use."""
    if settings.api_processes:
        return settings.api_processes
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
