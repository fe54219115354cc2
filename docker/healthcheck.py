#!/usr/bin/env python
"""Container health checks: `lanes-healthcheck api | worker | scheduler`; exit 0 when healthy.

- api: the app in this container answers HTTP. It asks `/healthz` (liveness), which needs neither
  Redis nor the database: `/api/v1/health` also fails when no worker runs, and restarting the API
  would not fix that.
- worker: a worker started in this container (same hostname) is registered in Redis and its
  heartbeat key has not expired. Worker names stay RQ's random ids, so a restarted container never
  meets its own stale registration.
- scheduler: a scheduler started in this container (same hostname) has a live registration in
  Redis (rq-scheduler's `rq:scheduler_instance:<name>`, which expires about 11 s after its last
  heartbeat) and has not registered its death.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request

TIMEOUT_S = 3.0


def api_answers() -> bool:
    port = os.environ.get("LANES_API_PORT", "8000")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT_S) as response:
        return bool(response.status == 200)


def worker_registered() -> bool:
    from backend.config import get_settings
    from backend.queues import redis_for

    redis = redis_for(get_settings(), socket_timeout_s=TIMEOUT_S)
    try:
        hostname = socket.gethostname().encode()
        # A worker's hash expires with its heartbeat; `rq:workers` may still list dead ones.
        return any(redis.hget(key, "hostname") == hostname for key in redis.smembers("rq:workers"))
    finally:
        redis.close()


def scheduler_alive() -> bool:
    from backend.config import get_settings
    from backend.health import SCHEDULER_KEYS
    from backend.queues import redis_for

    redis = redis_for(get_settings(), socket_timeout_s=TIMEOUT_S)
    try:
        hostname = socket.gethostname().encode()
        for key in redis.scan_iter(match=SCHEDULER_KEYS, count=500):
            fields = redis.hgetall(key)
            if fields.get(b"hostname") == hostname and b"death" not in fields:
                return True
        return False
    finally:
        redis.close()


CHECKS = {"api": api_answers, "worker": worker_registered, "scheduler": scheduler_alive}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CHECKS:
        print(f"usage: lanes-healthcheck {' | '.join(CHECKS)}", file=sys.stderr)
        return 64
    try:
        healthy = CHECKS[argv[0]]()
    except Exception as exc:  # any failure to check is unhealthy, with the reason in `docker inspect`
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not healthy:
        print(f"unhealthy: no {argv[0]} answers in this container", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
