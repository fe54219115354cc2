"""Fixtures of the integration stories (real redis-server, real workers, both databases)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.main import create_app


@pytest.fixture
def api_factory(
    make_settings: Any, redis_url: str, auth_headers: dict[str, str]
) -> Iterator[Callable[..., TestClient]]:
    """Builds the API on the test database and the private Redis, with settings overridden."""
    with ExitStack() as stack:

        def build(**overrides: Any) -> TestClient:
            app = create_app(make_settings(redis_url, **overrides))
            return stack.enter_context(TestClient(app, headers=auth_headers))

        yield build
