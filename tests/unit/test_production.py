"""Production settings: LANES_ENV=production refuses the unsafe defaults; readiness for orchestrators."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend import tenants
from backend.config import Settings
from backend.db import make_engine
from backend.enums import Plan
from backend.main import create_app
from backend.queues import make_redis, redis_for

POSTGRES = "postgresql+psycopg://lanes@db.internal/lanes"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"database_url": "sqlite:///./lanes.db"}, "refuses SQLite"),
        ({"webhook_allow": "127.0.0.0/8"}, "loopback, private or link-local"),
        ({"webhook_allow": "10.0.0.0/8"}, "loopback, private or link-local"),
        ({"webhook_allow": "localhost"}, "localhost"),
        ({"rate_limit_enabled": False}, "RATE_LIMIT_ENABLED=false"),
        ({"redis_url": "rediss://redis.internal:6380/0", "redis_tls_verify": "none"}, "TLS_VERIFY=none"),
        ({"sql_echo": True}, "LANES_SQL_ECHO"),
    ],
)
def test_production_refuses_what_is_only_safe_on_a_laptop(values: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Settings.model_validate({"env": "production", "database_url": POSTGRES, **values})


def test_production_accepts_postgresql_and_a_public_allow_list() -> None:
    settings = Settings.model_validate(
        {"env": "production", "database_url": POSTGRES, "webhook_allow": "hooks.example.com"}
    )

    assert settings.env == "production" and settings.db_pool_size == 5


def test_production_will_not_start_while_the_demo_tenant_has_a_live_key(
    database_url: str, session: Session, fake_redis: fakeredis.FakeRedis
) -> None:
    settings = Settings.model_validate({"database_url": database_url})
    settings = settings.model_copy(update={"env": "production"})  # SQLite is refused, but not under test
    demo = tenants.ensure_tenant(session=session, name=tenants.DEMO_TENANT, plan=Plan.UNLIMITED)
    made = tenants.create_key(session=session, tenant=demo)

    with pytest.raises(RuntimeError, match="revoke-key"), TestClient(create_app(settings, redis=fake_redis)):
        pass
    tenants.revoke_key(session=session, prefix=made.row.prefix)
    with TestClient(create_app(settings, redis=fake_redis)) as client:
        assert client.get("/healthz").status_code == 200


def test_the_pool_is_sized_by_settings() -> None:
    engine = make_engine(POSTGRES, pool_size=7, max_overflow=3, pool_timeout_s=4)

    assert (engine.pool.size(), engine.pool._max_overflow, engine.pool._timeout) == (7, 3, 4)  # type: ignore[attr-defined]


def test_readiness_needs_redis_and_the_database_but_no_worker(
    make_settings: Any, fake_redis: fakeredis.FakeRedis
) -> None:
    with TestClient(create_app(make_settings(), redis=fake_redis)) as client:
        ready = client.get("/readyz")
        health = client.get("/api/v1/health")
    with TestClient(create_app(make_settings(), redis=make_redis("redis://127.0.0.1:1/0"))) as client:
        down = client.get("/readyz")

    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "reasons": []})
    assert health.status_code == 503  # no worker: unhealthy, yet ready to take jobs
    assert down.status_code == 503 and down.json()["reasons"] == ["redis unavailable: ConnectionError"]


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"redis_url": "http://redis.internal"}, "redis://, rediss:// or unix://"),
        ({"redis_sentinels": "sentinel-1:port"}, "not a Sentinel address"),
        ({"redis_tls_verify": "sometimes"}, "redis_tls_verify"),
    ],
)
def test_redis_settings_are_checked_when_read(values: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Settings.model_validate(values)


def test_tls_options_reach_the_connection_only_for_rediss() -> None:
    tls = Settings.model_validate(
        {
            "redis_url": "rediss://redis.internal:6380/2",
            "redis_username": "lanes",
            "redis_password": "from-a-secret",
            "redis_tls_ca_file": "/etc/lanes/ca.pem",
        }
    )
    plain = Settings.model_validate(
        {"redis_url": "redis://:url-wins@redis.internal/0", "redis_password": "x"}
    )

    tls_options = redis_for(tls).connection_pool.connection_kwargs
    plain_options = redis_for(plain).connection_pool.connection_kwargs

    assert (tls_options["ssl_ca_certs"], tls_options["ssl_cert_reqs"], tls_options["db"]) == (
        "/etc/lanes/ca.pem",
        "required",
        2,
    )
    assert (tls_options["username"], tls_options["password"]) == ("lanes", "from-a-secret")
    assert "ssl_ca_certs" not in plain_options
    assert plain_options["password"] == "url-wins"
    assert "from-a-secret" not in repr(tls)  # a secret is not printed with the settings


def test_sentinel_settings_name_the_sentinels_and_keep_tls_for_the_master() -> None:
    settings = Settings.model_validate(
        {
            "redis_url": "rediss://lanes:pw@mymaster/3",
            "redis_sentinels": "sentinel-1:26380, sentinel-2",
            "redis_sentinel_master": "lanes-main",
        }
    )

    client = redis_for(settings)
    pool = client.connection_pool

    assert settings.redis_sentinel_addresses() == [("sentinel-1", 26380), ("sentinel-2", 26379)]
    assert type(pool).__name__ == "SentinelConnectionPool" and pool.service_name == "lanes-main"
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["username"]) == (3, "lanes")
