"""Rate limits: how often a tenant may call the API, counted in Redis so every API process shares them.

There are three limits, each a setting in slowapi's form (`10/minute`, `100 per hour`):

- `submit` (`LANES_RATE_LIMIT_SUBMIT`): the routes that make a job, `POST /api/v1/jobs` and a
  schedule's `run`;
- `batch` (`LANES_RATE_LIMIT_BATCH`): `POST /api/v1/jobs/batch`;
- `default` (`LANES_RATE_LIMIT_DEFAULT`): every other `/api/v1` route but health.

A route names its limit in its OpenAPI entry (`x-rate-limit`); a route that names none takes
`default`. A caller is counted by its tenant once its key is verified (`backend.api.auth`); a
request whose key fails is counted by its client address, against `default`, so a client trying
keys is refused with 429 before long. The client address is the peer's, or, when the peer is one
of `LANES_TRUSTED_PROXIES`, the nearest address in `X-Forwarded-For` that is not a trusted proxy.

The windows are moving windows (slowapi's `moving-window` strategy on Redis): `10/minute` means
at most 10 in any 60 seconds, and a refused call takes nothing. Every counted answer carries
`X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until a call is
free again); a 429 carries a true `Retry-After` too.

Why not slowapi's decorator: it runs inside the handler, after FastAPI has solved the
dependencies, so it cannot count a request whose key fails; its `X-RateLimit-Reset` is a Unix
time, not the seconds the API promises; and it would ask every handler for `request` and
`response` parameters. So slowapi's `Limiter` is built here (storage, strategy, key prefix) and
asked from one dependency; the headers go on in one small middleware. A call is counted and its
window read in one script (`HIT_AND_LOOK`) on the limiter's own keys and list layout, where
`limits` takes two round trips.

When Redis cannot be asked, the API answers anyway (fail open): the call is let through without
headers, logged at most once a minute, and counted in `RateLimits.failed_open`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from limits import RateLimitItem, parse
from limits.errors import StorageError
from redis import Redis
from redis.exceptions import RedisError
from slowapi import Limiter
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend import metrics
from backend.config import Settings
from backend.errors import RateLimited

log = logging.getLogger(__name__)

#: Prefix of the limiter's Redis keys: `lanes:ratelimit:LIMITER/<limit>/<who>/<amount>/<n>/<unit>`.
KEY_PREFIX = "lanes:ratelimit"
#: The OpenAPI extension a route names its limit in.
ROUTE_EXTENSION = "x-rate-limit"
#: A failing limiter storage is logged at most this often.
FAIL_OPEN_LOG_INTERVAL_S = 60.0
#: Count one call in a moving window and say where the caller stands, in one round trip. The
#: window is `limits`' own (its `acquire_moving_window.lua` and `moving_window.lua` together): a
#: list of call times, newest first, trimmed to the limit. KEYS[1]: the window; ARGV: now (Unix
#: seconds), the limit, the window's length (s). Returns {1 if counted else 0, the oldest call
#: time still in the window (nil if none), the calls in the window}.
HIT_AND_LOOK = """
local now, limit, expiry = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local since = now - expiry
local allowed = 0
local last = redis.call('lindex', KEYS[1], limit - 1)
if not (last and tonumber(last) >= since) then
    redis.call('lpush', KEYS[1], ARGV[1])
    redis.call('ltrim', KEYS[1], 0, limit - 1)
    redis.call('expire', KEYS[1], expiry)
    allowed = 1
end
local low, high, found = 0, math.min(redis.call('llen', KEYS[1]), limit) - 1, nil
while low <= high do
    local middle = math.floor((low + high) / 2)
    local value = tonumber(redis.call('lindex', KEYS[1], middle))
    if value and value >= since then
        found = middle
        low = middle + 1
    else
        high = middle - 1
    end
end
if found then
    return {allowed, redis.call('lindex', KEYS[1], found), found + 1}
end
return {allowed, false, 0}
"""


class LimitName(StrEnum):
    """Which of the three limits a route counts against."""

    SUBMIT = "submit"
    BATCH = "batch"
    DEFAULT = "default"


def route_limit(name: LimitName) -> dict[str, Any]:
    """`openapi_extra` for a route that counts against `name` rather than `default`."""
    return {ROUTE_EXTENSION: name.value}


@dataclass(frozen=True)
class Window:
    """Where a caller stands against one limit, as the `X-RateLimit-*` headers say it."""

    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }


class RateLimits:
    """The API process's limiter: slowapi's `Limiter` on the app's Redis, one moving window per caller."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.enabled = settings.rate_limit_enabled
        self.limits: dict[LimitName, RateLimitItem] = {
            LimitName.SUBMIT: parse(settings.rate_limit_submit),
            LimitName.BATCH: parse(settings.rate_limit_batch),
            LimitName.DEFAULT: parse(settings.rate_limit_default),
        }
        self.proxies = settings.trusted_proxy_networks()
        self.redis = redis
        # The app's own connection pool: the limiter follows the API's Redis (TLS, ACL user, Sentinel,
        # a test's server). With a pool, `limits` reads only the URI's scheme, to pick its Redis storage.
        storage: dict[str, Any] = {"connection_pool": redis.connection_pool, "key_prefix": KEY_PREFIX}
        self._limiter = Limiter(
            key_func=lambda: "",
            strategy="moving-window",
            storage_uri="redis://",
            storage_options=storage,
            enabled=settings.rate_limit_enabled,
        )
        # slowapi's limiter gives the storage (its key prefix, the app's pool); a call is counted with
        # one script of ours, on the storage's keys, where `limits` takes two round trips (a hit, then
        # a look at the window for the headers).
        self._storage: Any = self._limiter.limiter.storage
        self._hit_and_look = redis.register_script(HIT_AND_LOOK)
        #: Calls let through because the storage failed; calls refused with 429.
        self.failed_open = 0
        self.rejected = 0
        self._last_fail_log = -math.inf

    def admit(self, request: Request, *, who: str, name: LimitName | None = None) -> None:
        """Count one call of `who` against the route's limit (or `name`); `RateLimited` when over it.

        The caller's window is left in `request.state.rate_limit` for the headers.
        """
        if not self.enabled:
            return
        name = name or limit_of(request)
        item = self.limits[name]
        key = self._storage.prefixed_key(item.key_for(name.value, who))
        now = time.time()
        try:
            allowed, oldest, hits = self._hit_and_look(
                keys=[key], args=[repr(now), item.amount, item.get_expiry()]
            )
        except (RedisError, StorageError, OSError) as exc:
            self._fail_open(exc)
            return
        reset_at = (float(oldest) if oldest is not None else now) + item.get_expiry()
        window = Window(
            limit=item.amount, remaining=max(0, item.amount - int(hits)), reset_s=_seconds_until(reset_at)
        )
        request.state.rate_limit = window
        if not allowed:
            self.rejected += 1
            metrics.count(self.redis, "lanes_rate_limited", limit=name.value)
            raise RateLimited(retry_after_s=window.reset_s)

    def client_address(self, request: Request) -> str:
        """The client's address: the peer, or the first untrusted hop of `X-Forwarded-For` behind a proxy."""
        peer = request.client.host if request.client else "unknown"
        if not self.proxies or not _within(peer, self.proxies):
            return peer
        hops = [
            hop.strip()
            for header in request.headers.getlist("x-forwarded-for")
            for hop in header.split(",")
            if hop.strip()
        ]
        for hop in reversed(hops):
            if not _within(hop, self.proxies):
                return hop if _is_address(hop) else peer
        return hops[0] if hops else peer

    def _fail_open(self, exc: Exception) -> None:
        self.failed_open += 1
        now = time.monotonic()
        if now - self._last_fail_log >= FAIL_OPEN_LOG_INTERVAL_S:
            self._last_fail_log = now
            log.warning(
                "rate limits not enforced: the limiter's Redis failed (%s: %s); %d call(s) let through",
                type(exc).__name__,
                exc,
                self.failed_open,
            )


def limit_of(request: Request) -> LimitName:
    """The limit the matched route names in its OpenAPI entry; `default` for every other."""
    extra = getattr(request.scope.get("route"), "openapi_extra", None) or {}
    return LimitName(extra.get(ROUTE_EXTENSION, LimitName.DEFAULT.value))


class RateLimitHeaders:
    """ASGI middleware: puts the caller's `X-RateLimit-*` headers on every answer that was counted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                window = scope.get("state", {}).get("rate_limit")
                if isinstance(window, Window):
                    headers = MutableHeaders(scope=message)
                    for name, value in window.headers().items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _seconds_until(moment: float) -> int:
    return max(1, math.ceil(moment - time.time()))


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _within(text: str, networks: list[IPv4Network | IPv6Network]) -> bool:
    try:
        address = ip_address(text)
    except ValueError:
        return False
    return any(address in network for network in networks)
