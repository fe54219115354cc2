"""Tasks, the allow-list, JSON job data and retry waits, on fakeredis."""

from __future__ import annotations

import itertools
import random

import fakeredis
import pytest
from pydantic import BaseModel

from backend.config import Settings
from backend.errors import InvalidInput, UnknownTask
from backend.queues import LanesJob, attempt_of, backoff_intervals, queue_for
from backend.tasks import TaskRegistry, progress, registry
from backend.tasks import reporting as progress_module


@pytest.fixture(autouse=True)
def demo_tasks() -> None:
    """The built-in demo tasks, whichever tests ran before (these read them from the registry)."""
    registry.load_modules([])


def test_backoff_waits_double_with_bounded_jitter_and_respect_the_cap() -> None:
    for seed in range(50):
        waits = backoff_intervals(6, base_s=120, cap_s=3600, rng=random.Random(seed))
        assert [120 <= waits[0] <= 150, 240 <= waits[1] <= 300, 480 <= waits[2] <= 600] == [True] * 3
        assert all(a < b for a, b in itertools.pairwise(waits[:5]))
        assert max(waits) <= 3600


def test_backoff_waits_are_whole_seconds_of_at_least_one() -> None:
    assert backoff_intervals(3, base_s=0.1, cap_s=10, rng=random.Random(1))[0] == 1


def test_a_job_naming_a_function_outside_the_registry_cannot_resolve(fake_redis: fakeredis.FakeRedis) -> None:
    job = queue_for("normal", fake_redis).enqueue_call("os.system", args=["echo pwned"])

    fetched = LanesJob.fetch(job.id, connection=fake_redis)
    with pytest.raises(UnknownTask):
        _ = fetched.func


def test_a_registered_task_resolves_to_the_task_not_an_import(fake_redis: fakeredis.FakeRedis) -> None:
    job = queue_for("normal", fake_redis).enqueue_call("demo.echo", kwargs={"x": 1})

    fetched = LanesJob.fetch(job.id, connection=fake_redis)
    assert fetched.func is registry.get("demo.echo")
    assert fetched.perform() == {"x": 1}


def test_attempts_count_from_rq_retries_left(fake_redis: fakeredis.FakeRedis) -> None:
    job = queue_for("normal", fake_redis).enqueue_call("demo.echo", meta={"max_retries": 3})
    job.retries_left = 3
    assert attempt_of(job) == 1
    job.retries_left = 1
    assert attempt_of(job) == 3
    job.retries_left = 0
    assert attempt_of(job) == 4


def test_a_registry_refuses_two_functions_under_one_name() -> None:
    local = TaskRegistry()

    class P(BaseModel):
        pass

    local.task("x.one", params=P)(lambda p: 1)
    with pytest.raises(ValueError, match="already registered"):
        local.task("x.one", params=P)(lambda p: 2)


def test_params_are_validated_by_the_task_model() -> None:
    sleep = registry.get("demo.sleep")
    assert sleep.validate({"seconds": "1.5"}) == {"seconds": 1.5, "steps": 10}
    with pytest.raises(InvalidInput) as caught:
        sleep.validate({"seconds": 99999})
    assert caught.value.code == "invalid_params"


def test_a_tasks_params_schema_is_the_models_and_each_caller_gets_its_own_copy() -> None:
    sleep = registry.get("demo.sleep")
    first = sleep.params_schema()
    assert first == sleep.params_model.model_json_schema()
    first["properties"]["seconds"]["type"] = "changed by a caller"
    assert sleep.params_schema()["properties"]["seconds"]["type"] == "number"


def test_progress_is_clamped_and_reaches_the_installed_sink() -> None:
    seen: list[tuple[int, str | None]] = []
    progress_module.set_progress_sink(lambda pct, stage: seen.append((pct, stage)))
    try:
        progress(-5)
        progress(42.6, "halfway")
        progress(250, "done")
    finally:
        progress_module.set_progress_sink(None)

    assert seen == [(0, None), (43, "halfway"), (100, "done")]


def test_progress_outside_a_worker_is_harmless() -> None:
    progress(50, "nobody listens")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6390/2")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("LANES_RETRY_BASE_S", "7")
    monkeypatch.setenv("LANES_TASK_MODULES", "a.tasks, b.tasks ,")

    settings = Settings()

    assert settings.redis_url == "redis://example:6390/2"
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.retry_base_s == 7
    assert settings.task_module_names() == ["a.tasks", "b.tasks"]
