"""RQ as Lanes uses it: a JSON job class that runs only registered tasks, and the queues.

Every process (api, worker, scheduler) uses `LanesJob` and `JSONSerializer`, so job data in Redis
is JSON that `redis-cli` can read, never pickle. A job's RQ function name is its task name.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from redis import Redis
from redis.connection import parse_url
from redis.sentinel import Sentinel
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.enums import DELIVERY_TASK, QUEUE_ORDER, WEBHOOK_QUEUE
from backend.errors import UnknownTask
from backend.tasks import registry

if TYPE_CHECKING:
    from backend.config import Settings

#: Redis set of job ids whose SQL mirror write failed; workers replay them.
MIRROR_PENDING_KEY = "lanes:mirror:pending"
CANCEL_FLAG_TTL_S = 7 * 86_400


def cancel_flag_key(job_id: str) -> str:
    """Set while a job is being cancelled: a worker that meets the flag does not run the job."""
    return f"lanes:cancel:{job_id}"


def alive_key(worker_name: str) -> str:
    """Set by a worker at each heartbeat for three beats: while it exists, the worker is alive.

    RQ's own signs of life (the worker's key, a job's execution) last 60 s past the last beat;
    this one lets a dead worker's job be retried within seconds of three missed beats.
    """
    return f"lanes:alive:{worker_name}"


#: Beats a worker may miss before its running job counts as abandoned.
ALIVE_BEATS = 3
#: A field of the worker's RQ hash: set, the worker keeps its `alive_key`.
ALIVE_FIELD = "lanes_alive"

REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 5.0
RETRY_JITTER = 0.25  # each wait is stretched by up to this fraction, at random


class LanesJob(Job):
    """An RQ job whose data is JSON and whose function comes only from the task registry."""

    #: In memory only: a job its worker's shutdown grace cut short retries at once, not after a wait.
    handed_back = False

    def __init__(self, id: str | None = None, connection: Redis | None = None, serializer: Any = None):
        super().__init__(id=id, connection=connection, serializer=serializer or JSONSerializer)

    def get_retry_interval(self) -> int:
        return 0 if self.handed_back else super().get_retry_interval()

    # RQ would import and call any dotted path a job hash names as a callback, and send its own
    # webhooks to any URL the hash holds, unchecked. Lanes uses neither, so a job hash written
    # behind the platform's back names no code and reaches no address.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        return None

    @property
    def func(self) -> Any:
        if self.instance is not None:
            raise UnknownTask(f"job {self.id} names a method on an instance; Lanes runs only tasks")
        if self.func_name == DELIVERY_TASK and self.origin == WEBHOOK_QUEUE:
            from backend.webhook_delivery import deliver  # the one internal task, never submitted

            return deliver
        return registry.get(self.func_name)


#: Queues an admin paused: workers stop taking their jobs (submits are still accepted).
PAUSED_KEY = "lanes:paused"
#: What a worker listens on while every one of its queues is paused: nothing is ever put there.
IDLE_QUEUE = "lanes-idle"


def make_redis(url: str, *, socket_timeout_s: float | None = REDIS_SOCKET_TIMEOUT_S) -> Redis:
    """A client for a plain `url` (tests, tools); processes use `redis_for(settings)`."""
    return Redis.from_url(url, **_timeouts(socket_timeout_s))


def redis_for(settings: Settings, *, socket_timeout_s: float | None = REDIS_SOCKET_TIMEOUT_S) -> Redis:
    """The client every Lanes process uses: REDIS_URL plus the ACL, TLS and Sentinel settings.

    It fails fast when Redis is away instead of hanging a request. The URL's own user, password
    and query options (`?ssl_ca_certs=…`) win over the settings. With `LANES_REDIS_SENTINELS`, the
    master is found through Sentinel and found again after a failover; REDIS_URL then gives only
    the database, the user and `rediss://` for TLS.
    """
    options = _timeouts(socket_timeout_s)
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password.get_secret_value():
        options["password"] = settings.redis_password.get_secret_value()
    tls = urlsplit(settings.redis_url).scheme == "rediss"
    if tls:
        verify = settings.redis_tls_verify
        options.update(
            ssl_cert_reqs=verify,
            ssl_check_hostname=settings.redis_tls_check_hostname and verify != "none",
            ssl_ca_certs=settings.redis_tls_ca_file or None,
            ssl_certfile=settings.redis_tls_cert_file or None,
            ssl_keyfile=settings.redis_tls_key_file or None,
        )
    if not settings.redis_sentinels:
        return Redis.from_url(settings.redis_url, **options)

    from_url = parse_url(settings.redis_url)
    for where in ("host", "port", "path", "connection_class"):
        from_url.pop(where, None)
    options.update(from_url)
    if tls:
        options["ssl"] = True  # Sentinel then connects to the master with SentinelManagedSSLConnection
    sentinel_options: dict[str, Any] = _timeouts(REDIS_SOCKET_TIMEOUT_S)
    sentinel_options.pop("health_check_interval")
    if settings.redis_sentinel_password.get_secret_value():
        sentinel_options["password"] = settings.redis_sentinel_password.get_secret_value()
    sentinel = Sentinel(settings.redis_sentinel_addresses(), sentinel_kwargs=sentinel_options, **options)
    return sentinel.master_for(settings.redis_sentinel_master, redis_class=Redis)


def _timeouts(socket_timeout_s: float | None) -> dict[str, Any]:
    return {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        "socket_timeout": socket_timeout_s,
        "health_check_interval": 30,
    }


#: Pops the first job of the first non-empty list of KEYS, in order: {key, job id}, or nil.
_FIRST_POP_SCRIPT = """
for _, key in ipairs(KEYS) do
  local id = redis.call('LPOP', key)
  if id then return {key, id} end
end
return nil
"""


class LanesQueue(Queue):
    """RQ's queue, but a `--burst` worker's non-blocking pass over its queues is one round trip,
    where RQ's pops each queue in turn (a worker that waits for work makes one BLPOP either way)."""

    @classmethod
    def lpop(cls, queue_keys: Sequence[str], timeout: int | None, connection: Redis | None = None) -> Any:
        if timeout is not None or connection is None or len(queue_keys) < 2:
            return super().lpop(queue_keys, timeout, connection=connection)
        result = connection.eval(_FIRST_POP_SCRIPT, len(queue_keys), *queue_keys)
        return (result[0], result[1]) if result else None


def queue_for(name: str, connection: Redis) -> Queue:
    return LanesQueue(name, connection=connection, job_class=LanesJob, serializer=JSONSerializer)


def all_queues(connection: Redis, names: Sequence[str] = tuple(QUEUE_ORDER)) -> list[Queue]:
    return [queue_for(name, connection) for name in names]


def backoff_intervals(
    retries: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> list[int]:
    """Waits before each retry: base × 2ⁿ, stretched by up to 25 % jitter, capped, whole seconds.

    The jitter never lets a wait reach the next one's floor, so waits grow until the cap.
    """
    # The module's generator by default: a new Random() per call seeded itself from os.urandom,
    # a cost per submitted job (the module's own is seeded again in a forked child).
    draw = rng.random if rng is not None else random.random
    waits = []
    for n in range(retries):
        wait = min(cap_s, base_s * 2**n * (1 + RETRY_JITTER * draw()))
        waits.append(max(1, round(wait)))
    return waits


def make_retry(max_retries: int, *, base_s: float, cap_s: float) -> Retry | None:
    if max_retries <= 0:
        return None
    return Retry(max=max_retries, interval=backoff_intervals(max_retries, base_s=base_s, cap_s=cap_s))


def attempt_of(job: Job) -> int:
    """Which run of `job` is current or last, counting from 1, from RQ's own retry bookkeeping.

    A requeued job carries the runs before the requeue in `meta["attempts_base"]`.
    """
    base = int(job.meta.get("attempts_base", 0) or 0)
    max_retries = int(job.meta.get("max_retries", 0) or 0)
    if job.retries_left is None or max_retries <= 0:
        return base + 1
    return base + max(1, max_retries - job.retries_left + 1)


def epoch_of(job: Job) -> int:
    """How many times the job has been requeued (its SQL row's epoch)."""
    return int(job.meta.get("epoch", 0) or 0)


def scheduled_at(job: Job, connection: Redis) -> datetime | None:
    """When RQ's scheduler will put `job` back on its queue, if it is waiting to."""
    score = connection.zscore(queue_for(job.origin, connection).scheduled_job_registry.key, job.id)
    return datetime.fromtimestamp(float(score), UTC) if score is not None else None
