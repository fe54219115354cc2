"""Production Redis set-ups with real servers: TLS with an ACL user, and Sentinel through a failover.

The API and a worker run as real processes and only the settings change (REDIS_URL and
LANES_REDIS_*), as they would in a deployment.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from backend.config import Settings
from backend.devredis import RedisServer, free_port, redis_server_binary, wait_until_answers
from backend.queues import redis_for
from tests.conftest import tenant_key
from tests.helpers import ApiFactory, ApiProcess, WorkerFactory, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

PASSWORD = "s3cret-for-tests"


def submit_and_finish(api: ApiProcess, key: str, *, timeout_s: float = 30) -> dict[str, Any]:
    """Submit a `demo.echo` job through `api` and wait until its row is terminal."""
    headers = {"Authorization": f"Bearer {key}"}
    answer = httpx.post(
        f"{api.url}/api/v1/jobs", json={"task": "demo.echo", "params": {"n": 1}}, headers=headers, timeout=15
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = httpx.get(f"{api.url}/api/v1/jobs/{job_id}", headers=headers, timeout=15).json()
        return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

    return wait_for(finished, timeout_s=timeout_s, interval_s=0.1, message=f"job {job_id} to finish")


def factories(
    url: str, database_url: str, log_dir: Path, settings: dict[str, Any]
) -> tuple[WorkerFactory, ApiFactory]:
    """Worker and API factories whose processes reach Redis only through `settings`."""
    connect = Settings.model_validate({"REDIS_URL": url, "DATABASE_URL": database_url, **settings})
    workers = WorkerFactory(url, database_url, log_dir, settings=settings, connect=lambda: redis_for(connect))
    return workers, ApiFactory(url, database_url, log_dir)


def ready(api: ApiProcess) -> int:
    return httpx.get(f"{api.url}/readyz", timeout=15).status_code


# -- TLS and an ACL user -------------------------------------------------------------------------


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> Certificates:
    """A throw-away CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lanes-test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, extension in (("server", ["-extfile", "san.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.crt", *extension)  # fmt: skip
    return Certificates(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Certificates]]:
    """A redis-server that speaks only TLS, asks for a client certificate, and knows only user `lanes`."""
    certificates = make_certificates(tmp_path / "certs")
    port = free_port()
    probe = (
        f"rediss://lanes:{PASSWORD}@localhost:{port}/0?ssl_ca_certs={certificates.ca}"
        f"&ssl_certfile={certificates.client_cert}&ssl_keyfile={certificates.client_key}"
    )
    server = RedisServer(
        tmp_path / "redis",
        port=free_port(),
        extra_args=(
            "--tls-port", str(port),
            "--tls-cert-file", str(certificates.server_cert),
            "--tls-key-file", str(certificates.server_key),
            "--tls-ca-cert-file", str(certificates.ca),
            "--tls-auth-clients", "yes",
            "--user", "default", "off",
            "--user", "lanes", "on", f">{PASSWORD}", "~*", "&*", "+@all",
        ),
        probe_url=probe,
    )  # fmt: skip
    # No plaintext port at all: `--port 0` after ours wins.
    server.extra_args = (*server.extra_args, "--port", "0")
    try:
        server.start()
    except RuntimeError as exc:
        if "tls" in (tmp_path / "redis" / "redis.log").read_text(errors="replace").lower():
            pytest.skip(f"this redis-server ({redis_server_binary()}) was built without TLS")
        raise exc
    server.port = port
    yield server, certificates
    server.stop()


def test_the_api_and_a_worker_use_redis_over_tls_as_an_acl_user(
    tls_redis: tuple[RedisServer, Certificates], database_url: str, tmp_path: Path
) -> None:
    server, certificates = tls_redis
    url = f"rediss://localhost:{server.port}/0"
    settings: dict[str, Any] = {
        "redis_username": "lanes",
        "redis_password": PASSWORD,
        "redis_tls_ca_file": str(certificates.ca),
        "redis_tls_cert_file": str(certificates.client_cert),
        "redis_tls_key_file": str(certificates.client_key),
    }
    workers, apis = factories(url, database_url, tmp_path, settings)
    key = tenant_key(database_url, "acme")
    try:
        workers.start()
        api = apis.start(**settings)
        assert ready(api) == 200

        job = submit_and_finish(api, key)

        assert job["status"] == "succeeded"
        assert job["worker"] == workers.started[0].name
        # What does not get in: no CA (the server's certificate is not trusted), a wrong password,
        # and the default user, which is off. Each API answers its liveness probe, not readiness.
        untrusted = apis.start(**{**settings, "redis_tls_ca_file": ""})
        wrong_password = apis.start(**{**settings, "redis_password": "guess"})
        no_user = apis.start(**{k: v for k, v in settings.items() if k not in {"redis_username"}})
        assert [ready(a) for a in (untrusted, wrong_password, no_user)] == [503, 503, 503]
    finally:
        apis.stop_all()
        workers.stop_all()


# -- Sentinel ------------------------------------------------------------------------------------


@dataclass
class SentinelSet:
    master: RedisServer
    replica: RedisServer
    sentinel: subprocess.Popen[bytes]
    sentinel_port: int

    def client(self) -> Redis:
        return Redis(port=self.sentinel_port, socket_timeout=5, decode_responses=True)

    def master_port(self) -> int:
        _host, port = self.client().execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
        return int(port)


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A master, its replica and one Sentinel watching them (a quorum of one, for a test)."""
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(
        tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(master.port))
    ).start()
    port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites its config file, so it must be writable
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nlogfile {tmp_path / 'sentinel.log'}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds mymaster 2000\n"
        "sentinel failover-timeout mymaster 10000\n"
    )
    process = subprocess.Popen(
        [redis_server_binary(), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    found = SentinelSet(master, replica, process, port)
    try:
        wait_until_answers(f"redis://127.0.0.1:{port}")
        wait_for(
            lambda: found.client().execute_command("SENTINEL", "replicas", "mymaster"),
            timeout_s=30,
            message="Sentinel to find the replica",
        )
        yield found
    finally:
        process.terminate()
        process.wait(timeout=10)
        replica.stop()
        master.stop()


def test_through_sentinel_jobs_keep_running_after_a_failover(
    sentinel_set: SentinelSet, database_url: str, tmp_path: Path
) -> None:
    url = "redis://mymaster/0"  # with Sentinel, REDIS_URL gives the database (and user, TLS), not the host
    settings = {
        "redis_sentinels": f"127.0.0.1:{sentinel_set.sentinel_port}",
        "redis_sentinel_master": "mymaster",
    }
    workers, apis = factories(url, database_url, tmp_path, settings)
    key = tenant_key(database_url, "acme")
    try:
        worker = workers.start()
        api = apis.start(**settings)
        assert submit_and_finish(api, key)["status"] == "succeeded"
        assert Redis(port=sentinel_set.master.port).llen("rq:queue:normal") == 0  # it went through the master

        sentinel_set.client().execute_command("SENTINEL", "failover", "mymaster")
        wait_for(
            lambda: sentinel_set.master_port() == sentinel_set.replica.port,
            timeout_s=60,
            message="Sentinel to promote the replica",
        )

        # The same processes, not restarted, find the new master: the API takes the job and the
        # worker runs it.
        job = wait_for(
            lambda: _submitted_after_failover(api, key), timeout_s=60, message="a submit to succeed"
        )
        assert job["status"] == "succeeded"
        assert job["worker"] == worker.name
        assert worker.process.poll() is None
        assert Redis(port=sentinel_set.replica.port).info("replication")["role"] == "master"
    finally:
        apis.stop_all()
        workers.stop_all()


def _submitted_after_failover(api: ApiProcess, key: str) -> dict[str, Any] | None:
    """A submit right after the failover may meet a 503 while clients reconnect; then try again."""
    try:
        return submit_and_finish(api, key)
    except AssertionError as exc:
        if "503" in str(exc) or "Redis" in str(exc):
            return None
        raise
