"""`make demo`: the whole platform in one terminal, on its embedded defaults.

Brings up Redis (reusing one that answers at REDIS_URL, else starting `redis-server`), migrates
the SQLite database, runs the API and the scheduler, submits example jobs across the three
priorities, then starts two workers (so the strict priority order shows), adds an example schedule
that fires every minute, prints the URLs to look at, and follows the jobs as they move. Ctrl-C
stops everything it started. `--exit-when-done` leaves once every example job has finished.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from backend import tenants
from backend.config import get_settings
from backend.db import make_engine, make_sessionmaker
from backend.devredis import RedisServer, answers
from backend.enums import Plan, Role
from backend.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"succeeded", "failed", "cancelled"}
DEMO_TENANT = "demo"
DEMO_RETRY_BASE_S = "3"  # so the flaky example is retried within seconds, not minutes

EXAMPLE_SCHEDULE: dict[str, Any] = {
    "name": "demo: echo every minute",
    "task": "demo.echo",
    "params": {"from": "a schedule"},
    "cron": "* * * * *",
    "timezone": "UTC",
}

EXAMPLES: list[dict[str, Any]] = [
    {"task": "demo.sleep", "params": {"seconds": 4, "steps": 8}, "priority": "low"},
    {"task": "demo.sleep", "params": {"seconds": 3, "steps": 6}, "priority": "normal"},
    {"task": "demo.echo", "params": {"hello": "world"}, "priority": "normal"},
    {"task": "demo.sleep", "params": {"seconds": 2, "steps": 4}, "priority": "high"},
    {"task": "demo.echo", "params": {"urgent": True}, "priority": "high"},
    {"task": "demo.flaky", "params": {"failures": 1}, "priority": "normal"},
    {"task": "demo.fail", "params": {"message": "this one fails on purpose"}, "max_retries": 1},
]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def pick_port(wanted: int) -> int:
    if port_free(wanted):
        return wanted
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    def __init__(self, port: int) -> None:
        self.settings = get_settings()
        self.port = port
        self.children: list[subprocess.Popen[bytes]] = []
        self.redis: RedisServer | None = None
        self.headers: dict[str, str] = {}
        self.key = ""
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.env.setdefault("LANES_RETRY_BASE_S", DEMO_RETRY_BASE_S)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        url = self.settings.redis_url
        if answers(url):
            print(f"• Redis: reusing the one at {url}")
        else:
            port = urlparse(url).port or 6379
            self.redis = RedisServer(ROOT / ".lanes" / "demo-redis", port=port).start()
            print(f"• Redis: started redis-server on port {port} (data in .lanes/demo-redis)")
        upgrade(self.settings.database_url, quiet=True)
        print(f"• Database: {self.settings.database_url} migrated")
        self.key = self.make_key()
        self.headers = {"Authorization": f"Bearer {self.key}"}
        print(f"• API key of tenant {DEMO_TENANT!r} (unlimited plan), made for this demo: {self.key}")
        self.spawn("api", [sys.executable, "-m", "uvicorn", "backend.main:app", "--port", str(self.port),
                           "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"])  # fmt: skip
        self.wait_for_api()
        self.spawn(
            "scheduler", [sys.executable, "-m", "scheduler", "--name", f"demo-scheduler-{os.getpid()}"]
        )

    def make_key(self) -> str:
        """A new admin key of the demo tenant (the tenant is made on the first demo)."""
        engine = make_engine(self.settings.database_url)
        try:
            with make_sessionmaker(engine)() as session:
                tenant = tenants.ensure_tenant(session=session, name=DEMO_TENANT, plan=Plan.UNLIMITED)
                return tenants.create_key(
                    session=session, tenant=tenant, role=Role.ADMIN, name="make demo"
                ).secret
        finally:
            engine.dispose()

    def add_schedule(self) -> str:
        """The example schedule's id: made on the first demo, found again on later ones."""
        listed = httpx.get(
            f"{self.api_url}/api/v1/schedules", params={"limit": 200}, headers=self.headers, timeout=10
        ).json()
        for schedule in listed["items"]:
            if schedule["name"] == EXAMPLE_SCHEDULE["name"]:
                return str(schedule["id"])
        response = httpx.post(
            f"{self.api_url}/api/v1/schedules", json=EXAMPLE_SCHEDULE, headers=self.headers, timeout=10
        )
        response.raise_for_status()
        return str(response.json()["id"])

    def start_workers(self) -> None:
        for n in (1, 2):
            self.spawn(
                f"worker {n}", [sys.executable, "-m", "worker", "--name", f"demo-worker-{n}-{os.getpid()}"]
            )

    def spawn(self, label: str, args: list[str]) -> None:
        log_dir = ROOT / ".lanes" / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = (log_dir / f"{label.replace(' ', '-')}.log").open("wb")
        # Each child in its own session: Ctrl-C reaches only the demo, which then asks every child
        # to stop exactly once (a second signal would turn a worker's warm shutdown cold).
        child = subprocess.Popen(
            args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.children.append(child)
        print(f"• {label}: pid {self.children[-1].pid}, log in .lanes/logs/{label.replace(' ', '-')}.log")

    def wait_for_api(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return
            if any(child.poll() is not None for child in self.children):
                raise SystemExit("a demo process exited early; see .lanes/logs/")
            time.sleep(0.2)
        raise SystemExit(f"the API did not come up within {timeout_s} s; see .lanes/logs/")

    def submit_examples(self) -> list[str]:
        ids = []
        for body in EXAMPLES:
            response = httpx.post(f"{self.api_url}/api/v1/jobs", json=body, headers=self.headers, timeout=10)
            response.raise_for_status()
            job = response.json()
            ids.append(job["id"])
            print(f"  submitted {job['task']:<11} on {job['queue']:<6} -> {job['id']}")
        return ids

    def print_urls(self, first_id: str, schedule_id: str) -> None:
        api = self.api_url
        print(f"""
Lanes is running.
  dashboard       {api}/dashboard   (paste the key below)
  API docs        {api}/docs
  jobs            {api}/api/v1/jobs
  one job         {api}/api/v1/jobs/{first_id}
  counts          {api}/api/v1/jobs/stats
  tasks           {api}/api/v1/tasks
  health          {api}/api/v1/health
  schedule        {api}/api/v1/schedules/{schedule_id}   (fires demo.echo every minute)
  its jobs        {api}/api/v1/schedules/{schedule_id}/jobs

Every /api/v1 route but health needs the key. Try:
  export LANES_KEY={self.key}
  curl -s {api}/api/v1/jobs -H "Authorization: Bearer $LANES_KEY"
  curl -s -X POST {api}/api/v1/jobs -H "Authorization: Bearer $LANES_KEY" \\
       -H 'content-type: application/json' \\
       -d '{{"task": "demo.sleep", "params": {{"seconds": 5}}, "priority": "high"}}'
  redis-cli -u {self.settings.redis_url} LLEN rq:queue:normal
Ctrl-C stops everything this demo started.
""")

    def follow(self, ids: list[str], *, exit_when_done: bool) -> bool:
        last: dict[str, tuple[str, int]] = {}
        while True:
            # One list call a second: well inside the demo key's rate limit (100 calls a minute).
            for job in self.jobs(ids):
                state = (job["status"], job["progress"])
                if last.get(job["id"]) != state:
                    last[job["id"]] = state
                    extra = f" error: {job['error']}" if job["status"] in {"retrying", "failed"} else ""
                    line = f"{job['task']:<11} {job['queue']:<6} {job['status']:<9} {job['progress']:>3}%"
                    print(f"  {line} attempt {job['attempts']}{extra}")
            done = len(last) == len(ids) and all(status in TERMINAL for status, _ in last.values())
            if done and exit_when_done:
                return (
                    all(last[job_id][0] == "succeeded" for job_id in ids[:-1])
                    and last[ids[-1]][0] == "failed"
                )
            if any(child.poll() is not None for child in self.children):
                print("a demo process exited; see .lanes/logs/")
                return False
            time.sleep(1.0)

    def jobs(self, ids: list[str]) -> list[dict[str, Any]]:
        """The jobs of `ids` among the newest 200, in their order; none when the API does not answer."""
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            response = httpx.get(
                f"{self.api_url}/api/v1/jobs", params={"limit": 200}, headers=self.headers, timeout=5
            )
            if response.status_code == 200:
                found = {job["id"]: job for job in response.json()["items"]}
                return [found[job_id] for job_id in ids if job_id in found]
        return []

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if self.redis is not None:
            self.redis.stop()
        print("• stopped everything the demo started")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="make demo", description="Run the whole Lanes platform in one terminal."
    )
    parser.add_argument("--port", type=int, default=get_settings().api_port)
    parser.add_argument(
        "--exit-when-done", action="store_true", help="leave once the example jobs have finished"
    )
    args = parser.parse_args(argv)

    demo = Demo(pick_port(args.port))
    ok = False
    # Ctrl-C and SIGTERM both stop the demo, even where a parent started it with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.start()
        print("\nSubmitting example jobs across the three priorities before any worker runs:")
        ids = demo.submit_examples()
        print("\nStarting two workers: they take high first, then normal, then low.")
        demo.start_workers()
        demo.print_urls(ids[0], demo.add_schedule())
        ok = demo.follow(ids, exit_when_done=args.exit_when_done)
    except KeyboardInterrupt:
        ok = True
        print()
    finally:
        demo.stop()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
