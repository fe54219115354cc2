"""Fixtures of the integration stories (real redis-server, real workers, both databases)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ApiFactory


@pytest.fixture
def api_factory(make_settings: Any, redis_url: str, make_client: Any) -> Iterator[Callable[..., TestClient]]:
    """Builds the API on the test database and the private Redis, with settings overridden."""
    with ExitStack() as stack:

        def build(**overrides: Any) -> TestClient:
            client: TestClient = stack.enter_context(make_client(make_settings(redis_url, **overrides)))
            return client

        yield build


@pytest.fixture
def apis(redis_url: str, database_url: str, tmp_path: Any) -> Iterator[ApiFactory]:
    """Starts real API processes (uvicorn) on the private Redis and the test database."""
    factory = ApiFactory(redis_url=redis_url, database_url=database_url, log_dir=tmp_path)
    yield factory
    factory.stop_all()
