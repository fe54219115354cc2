"""Settings: the one reader of the environment.

Every setting has a safe development default and a line in `.env.example`. Connections are never
built here; each process builds its own from these values (see `backend.db` and `backend.queues`).
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.webhook_urls import Allowance


class Settings(BaseSettings):
    """Lanes configuration, from `LANES_*` variables plus `REDIS_URL` and `DATABASE_URL`."""

    model_config = SettingsConfigDict(
        env_prefix="LANES_", env_file=".env", extra="ignore", populate_by_name=True
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "LANES_REDIS_URL")
    )
    database_url: str = Field(
        default="sqlite:///./lanes.db", validation_alias=AliasChoices("DATABASE_URL", "LANES_DATABASE_URL")
    )

    redis_username: str = Field(
        default="", description="Redis ACL user, when REDIS_URL names none (`redis://user:pw@host` wins)."
    )
    redis_password: SecretStr = Field(
        default=SecretStr(""), description="Redis password, when REDIS_URL carries none (from a secret)."
    )
    redis_tls_ca_file: str = Field(
        default="", description="CA bundle that signs Redis's certificate (rediss://)."
    )
    redis_tls_cert_file: str = Field(default="", description="Client certificate, where Redis asks for one.")
    redis_tls_key_file: str = Field(default="", description="The client certificate's private key.")
    redis_tls_verify: Literal["required", "optional", "none"] = Field(
        default="required", description="Check Redis's certificate (`none` only for a test server)."
    )
    redis_tls_check_hostname: bool = Field(
        default=True, description="Check that Redis's certificate names the host in REDIS_URL."
    )
    redis_sentinels: str = Field(
        default="",
        description="Comma-separated Sentinel host:port list; REDIS_URL then gives only db, user and TLS.",
    )
    redis_sentinel_master: str = Field(default="mymaster", description="The master's name in Sentinel.")
    redis_sentinel_password: SecretStr = Field(
        default=SecretStr(""), description="Password of the Sentinels themselves, where they ask for one."
    )

    env: Literal["development", "production"] = Field(
        default="development",
        description="`production` refuses the unsafe defaults (SQLite, loopback webhooks, SQL echo …).",
    )
    db_pool_size: int = Field(
        default=5, ge=1, description="Connections each process keeps open to PostgreSQL."
    )
    db_max_overflow: int = Field(default=10, ge=0, description="Extra PostgreSQL connections under load.")
    db_pool_timeout_s: float = Field(default=30.0, gt=0, description="Wait for a free connection this long.")

    task_modules: str = Field(default="", description="Comma-separated modules that register more tasks.")

    retry_base_s: float = Field(default=120.0, gt=0, description="First retry waits about this long.")
    retry_cap_s: float = Field(default=3600.0, gt=0, description="No retry waits longer than this.")
    default_max_retries: int = Field(default=3, ge=0)
    max_retries_limit: int = Field(default=25, ge=0, description="Largest max_retries a submit may ask for.")

    result_ttl_s: int = Field(default=86_400, description="How long RQ keeps a result in Redis.")
    failure_ttl_s: int = Field(default=30 * 86_400, description="How long the dead letter keeps a job.")
    retention_days: int = Field(
        default=30, ge=1, description="Finished rows older than this are pruned from SQL (make prune)."
    )
    reconcile_grace_s: float = Field(
        default=30.0, ge=0, description="The reconciler leaves rows touched more recently than this alone."
    )

    progress_min_interval_s: float = Field(
        default=0.5, ge=0, description="Progress writes to SQL closer than this are coalesced."
    )
    max_body_bytes: int = Field(default=1_048_576, gt=0, description="Largest request body the API reads.")
    max_json_depth: int = Field(default=32, gt=0, description="Deepest JSON nesting a request may carry.")
    list_limit_max: int = Field(default=200, gt=0, description="Cap on `limit` in job lists.")

    idempotency_ttl_s: int = Field(
        default=86_400, ge=1, description="An Idempotency-Key replays its first job for this long."
    )
    max_delay_s: int = Field(
        default=30 * 86_400, ge=0, description="Latest a submit may ask a job to run (delay_s or run_at)."
    )
    max_timeout_s: int = Field(default=86_400, ge=1, description="Largest timeout_s a submit may ask for.")

    cancel_wait_s: float = Field(
        default=5.0, ge=0, le=60, description="How long a cancel waits for a running job to stop."
    )
    worker_mode: Literal["fork", "simple"] = Field(
        default="fork",
        description="fork: each job in a child process of its own; simple: jobs run in the worker (fastest).",
    )
    worker_processes: int = Field(
        default=1, ge=1, le=256, description="Worker processes one `python -m worker` runs and restarts."
    )
    horse_jobs: int = Field(
        default=100,
        ge=1,
        description="Jobs a forking worker's horse runs before a new one is forked (1: a fork per job).",
    )
    worker_poll_s: int = Field(
        default=5, ge=1, description="An idle worker wakes this often to replay mirror writes."
    )
    worker_ttl_s: int = Field(
        default=60, ge=20, description="An idle worker's registration in RQ outlives its last beat this long."
    )
    worker_heartbeat_s: int = Field(
        default=5,
        ge=1,
        le=60,
        description="A busy worker proves it is alive this often; three missed beats and its job is retried.",
    )
    worker_shutdown_grace_s: float = Field(
        default=0.0,
        ge=0,
        description="On SIGTERM a running job gets this long, then goes back on its queue (0: no limit).",
    )
    dead_worker_sweep_s: float = Field(
        default=10.0, gt=0, description="The scheduler looks for running jobs of dead workers this often."
    )

    scheduler_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="The scheduler daemon looks for due schedules this often."
    )
    scheduler_sync_s: float = Field(
        default=5.0, gt=0, description="The scheduler makes Redis match the schedules table this often."
    )
    reconcile_interval_s: float = Field(
        default=60.0, gt=0, description="The scheduler runs the reconciler this often."
    )
    prune_interval_s: float = Field(
        default=3600.0, gt=0, description="The scheduler prunes finished rows this often."
    )

    operator_tenant: str = Field(
        default="operator", description="The platform operator's tenant: its admin keys see every tenant."
    )

    rate_limit_enabled: bool = Field(
        default=True, description="Limit how often each tenant may call the API (LANES_RATE_LIMIT_*)."
    )
    rate_limit_submit: str = Field(
        default="10/minute", description="Submits (POST /jobs, a schedule's run) a tenant may make."
    )
    rate_limit_batch: str = Field(default="5/minute", description="Batch submits a tenant may make.")
    rate_limit_default: str = Field(
        default="100/minute", description="Every other call a tenant (or an unauthenticated IP) may make."
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or networks whose X-Forwarded-For names the client.",
    )

    quota_free_daily: int = Field(default=1, ge=0, description="Jobs a day on the free plan.")
    quota_free_monthly: int = Field(default=30, ge=0, description="Jobs a month on the free plan.")
    quota_pro_daily: int = Field(default=10, ge=0, description="Jobs a day on the pro plan.")
    quota_pro_monthly: int = Field(default=100, ge=0, description="Jobs a month on the pro plan.")
    quota_elite_daily: int = Field(default=20, ge=0, description="Jobs a day on the elite plan.")
    quota_elite_monthly: int = Field(default=500, ge=0, description="Jobs a month on the elite plan.")

    webhook_allow: str = Field(
        default="",
        description="Comma-separated hosts or networks webhooks may reach although not public (tests).",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60, description="One webhook attempt's limit.")
    webhook_max_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Retries after a webhook attempt fails on the network, 429 or 5xx.",
    )
    webhook_retry_base_s: float = Field(
        default=10.0, gt=0, description="The first webhook retry waits about this long, then twice as long."
    )
    webhook_secret_grace_s: int = Field(
        default=86_400, ge=0, description="After a rotation the old secret also signs for this long."
    )

    health_queue_age_s: float = Field(
        default=300.0, gt=0, description="Health is degraded while a queued job has waited longer than this."
    )

    api_host: str = Field(default="127.0.0.1", description="Address `make api` listens on.")
    api_port: int = Field(
        default=8000, ge=1, le=65535, description="Port `make api` and `make demo` listen on."
    )
    api_processes: int = Field(
        default=0,
        ge=0,
        description="API processes `make api` starts on its port; 0: one per CPU core (within a CPU limit).",
    )

    sql_echo: bool = False
    log_level: str = "INFO"
    log_json: bool = Field(default=False, description="Log one JSON object a line instead of text.")

    @model_validator(mode="after")
    def _production(self) -> Settings:
        """`LANES_ENV=production` refuses what is only safe on a laptop."""
        if self.env != "production":
            return self
        if self.database_url.startswith("sqlite"):
            raise ValueError("LANES_ENV=production refuses SQLite: set DATABASE_URL to a PostgreSQL database")
        allowed = Allowance.parse(self.webhook_allow)
        for network in allowed.networks:
            if network.is_loopback or network.is_private or network.is_link_local:
                raise ValueError(
                    f"LANES_ENV=production refuses LANES_WEBHOOK_ALLOW={network}: webhooks must not reach"
                    " loopback, private or link-local addresses in production"
                )
        if "localhost" in allowed.hosts:
            raise ValueError("LANES_ENV=production refuses LANES_WEBHOOK_ALLOW=localhost")
        if not self.rate_limit_enabled:
            raise ValueError("LANES_ENV=production refuses LANES_RATE_LIMIT_ENABLED=false")
        if self.sql_echo:
            raise ValueError("LANES_ENV=production refuses LANES_SQL_ECHO: it logs every statement's values")
        if self.redis_tls_verify == "none" and self.redis_url.startswith("rediss://"):
            raise ValueError(
                "LANES_ENV=production refuses LANES_REDIS_TLS_VERIFY=none: give it the CA instead"
            )
        return self

    def redis_sentinel_addresses(self) -> list[tuple[str, int]]:
        """`redis_sentinels` as (host, port) pairs; a bare host means Sentinel's port 26379."""
        return sentinel_addresses(self.redis_sentinels)

    def task_module_names(self) -> list[str]:
        return [name.strip() for name in self.task_modules.split(",") if name.strip()]

    def trusted_proxy_networks(self) -> list[IPv4Network | IPv6Network]:
        """`trusted_proxies` as networks (a bare address is a network of one)."""
        parts = [part.strip() for part in self.trusted_proxies.split(",")]
        return [ip_network(part, strict=False) for part in parts if part]

    @field_validator("rate_limit_submit", "rate_limit_batch", "rate_limit_default")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate limit like '10/minute' or '100 per hour'") from exc
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        sentinel_addresses(value)  # ValueError names the bad address
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                f"REDIS_URL must start redis://, rediss:// or unix://, not {value.split(':')[0]}://"
            )
        return value

    @field_validator("webhook_allow")
    @classmethod
    def _webhook_allow(cls, value: str) -> str:
        Allowance.parse(value)  # ValueError names the bad item
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ip_network(part.strip(), strict=False)  # ValueError names the bad one
        return value


def sentinel_addresses(value: str) -> list[tuple[str, int]]:
    """`host:port, host` as (host, port) pairs, 26379 where no port is given; ValueError if bad."""
    addresses = []
    for part in filter(None, (part.strip() for part in value.split(","))):
        host, colon, port = part.rpartition(":")
        if not colon:
            addresses.append((part, 26379))
        elif host and port.isdigit() and 0 < int(port) < 65536:
            addresses.append((host, int(port)))
        else:
            raise ValueError(f"{part!r} is not a Sentinel address like 'sentinel-1:26379'")
    return addresses


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once. Tests build their own `Settings` and pass it down."""
    return Settings()
