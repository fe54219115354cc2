"""The compose file, checked as far as this machine allows: no Docker engine or compose plugin runs
here, so it is read as YAML and held to what the README and the deploy guide promise."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml

from backend.config import Settings
from backend.tasks import registry
from tests.helpers import ROOT

COMPOSE = ROOT / "docker" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def seconds(duration: str) -> int:
    """A compose duration (`65m`, `30s`, `1h30m`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration))


def test_every_process_is_a_service_of_one_image(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert set(services) == {"redis", "postgres", "migrate", "api", "worker", "scheduler"}
    for name in ("migrate", "api", "worker", "scheduler"):
        assert services[name]["image"] == "lanes:dev" and services[name]["command"][0] == name


def test_redis_keeps_its_jobs_and_refuses_to_evict_them(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["redis"]["command"])

    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert compose["services"]["postgres"]["image"] == "postgres:16"
    assert any("postgresql/data" in volume for volume in compose["services"]["postgres"]["volumes"])


def test_the_processes_wait_for_their_dependencies_and_restart(compose: dict[str, Any]) -> None:
    services = compose["services"]

    for name in ("api", "worker", "scheduler"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == depends["postgres"]["condition"] == "service_healthy"
        assert services[name]["restart"] == "unless-stopped" and "healthcheck" in services[name]
    assert services["migrate"]["restart"] == "no"
    assert all("healthcheck" in services[name] for name in ("redis", "postgres"))


def test_workers_are_replicated_and_may_finish_the_longest_default_job_on_sigterm(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    registry.load_modules([])
    longest = max(task.timeout_s for task in registry.all())

    assert worker["deploy"]["replicas"] >= 2
    assert seconds(worker["stop_grace_period"]) > longest


def test_the_environment_is_production_and_valid(compose: dict[str, Any]) -> None:
    environment = {key: str(value) for key, value in compose["x-lanes-environment"].items()}
    environment["POSTGRES_PASSWORD"] = "secret"
    values = {
        key.removeprefix("LANES_").lower(): re.sub(r"\$\{[^}]*:-([^}]*)\}", r"\1", value)
        for key, value in environment.items()
    }

    settings = Settings.model_validate(values)  # LANES_ENV=production refuses what is unsafe

    assert settings.env == "production" and settings.database_url.startswith("postgresql+psycopg://")


def test_the_image_holds_every_package_the_project_installs() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]

    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile, package
        assert f"!{package}/" in ignore, package
    assert "lanes = " in (ROOT / "pyproject.toml").read_text()  # the client's console script comes along
    # The final stage runs as a user that is not root and carries no compiler.
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert re.search(r"^USER lanes", runtime, re.M) and "build-essential" not in runtime
