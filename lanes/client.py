"""The Lanes Python client, on httpx: jobs, waiting for them, queues, workers, credits and schedules.

    from lanes.client import Lanes

    with Lanes("http://127.0.0.1:8000", api_key="lanes_…") as lanes:
        job = lanes.submit("demo.sleep", {"seconds": 2}, priority="high")
        done = lanes.wait(job["id"], timeout=60)      # the finished job, or JobFailed / JobCancelled
        for job in lanes.list(status="failed"):       # every page, newest first
            lanes.retry(job["id"])

`AsyncLanes` has the same methods, to be awaited. The URL and key come from the arguments, else
`LANES_URL` and `LANES_API_KEY`, else the config file (`~/.config/lanes/config.toml`, or
`LANES_CONFIG`): `url = "…"` and `api_key = "…"`. Jobs and everything else come back as the API's
JSON (dicts). The API's errors become exceptions carrying its `code` and `detail`:

    LanesError
    ├── ApiUnreachable        the API did not answer (connection refused, DNS, timeout)
    ├── ApiError              the API answered with an error: .status, .code, .detail
    │   ├── Unauthorized      401
    │   ├── Forbidden         403
    │   ├── NotFound          404
    │   ├── Conflict          409
    │   ├── InvalidRequest    400, 413, 422
    │   ├── RateLimited       429 rate_limited (.retry_after_s)
    │   ├── QuotaExceeded     429 quota_exceeded (.credits, .retry_after_s)
    │   └── Unavailable       503
    ├── JobFailed             wait(): the job ended failed (.job)
    ├── JobCancelled          wait(): the job was cancelled (.job)
    └── WaitTimeout           wait(): still not ended after the timeout (.job)

With `retry_rate_limited=True`, a 429 `rate_limited` is retried after its `Retry-After` (up to
`max_rate_limit_retries` times); quota refusals are not (they last until a day or month ends).
"""

from __future__ import annotations

import asyncio
import os
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
#: A list of JSON objects (named here: inside the clients, `list` is a method).
Items = list[dict[str, Any]]
DEFAULT_URL = "http://127.0.0.1:8000"
CONFIG_PATH = Path("~/.config/lanes/config.toml")


class LanesError(Exception):
    """Raised for anything the client could not do; the root of the tree."""


class ApiUnreachable(LanesError):
    """Raised when the API does not answer at all."""


class ApiError(LanesError):
    """Raised when the API answers with an error: `status`, `code` and `detail` are its own."""

    def __init__(self, status: int, code: str, detail: Any, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.body = status, code, detail, body or {}


class Unauthorized(ApiError):
    """Raised on 401: no key, or one that is malformed, unknown or revoked."""


class Forbidden(ApiError):
    """Raised on 403: the key may not do this (a platform admin's route)."""


class NotFound(ApiError):
    """Raised on 404: no such job or schedule, or not the key's tenant's."""


class Conflict(ApiError):
    """Raised on 409: the job's state does not allow it (cancel an ended job, retry a running one…)."""


class InvalidRequest(ApiError):
    """Raised on 400, 413 and 422: the request itself is wrong (params, URL, body)."""


class RateLimited(ApiError):
    """Raised on 429 `rate_limited`; `retry_after_s` says when to try again."""

    retry_after_s: float = 1.0


class QuotaExceeded(ApiError):
    """Raised on 429 `quota_exceeded`; `credits` and `retry_after_s` say until when."""

    retry_after_s: float = 1.0

    @property
    def credits(self) -> dict[str, Any]:
        found: dict[str, Any] = self.body.get("credits", {})
        return found


class Unavailable(ApiError):
    """Raised on 503: Redis or the database is away; try again shortly."""


class JobEnded(LanesError):
    """A job `wait()` watched ended otherwise than succeeded (or did not end): `job` is its last state."""

    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobEnded):
    """Raised by `wait()` when the job ended failed."""


class JobCancelled(JobEnded):
    """Raised by `wait()` when the job was cancelled."""


class WaitTimeout(JobEnded):
    """Raised by `wait()` when the job had not ended within the timeout."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    503: Unavailable,
}


def settings(url: str | None = None, api_key: str | None = None) -> tuple[str, str | None]:
    """The URL and key: the arguments, else LANES_URL / LANES_API_KEY, else the config file."""
    path = Path(os.environ.get("LANES_CONFIG", str(CONFIG_PATH))).expanduser()
    config: dict[str, Any] = {}
    if path.is_file():
        config = tomllib.loads(path.read_text())
    found_url = url or os.environ.get("LANES_URL") or config.get("url") or DEFAULT_URL
    found_key = api_key or os.environ.get("LANES_API_KEY") or config.get("api_key")
    return str(found_url).rstrip("/"), found_key


def _error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text, "code": "http_error"}
    detail, code = body.get("detail"), body.get("code", "http_error")
    if response.status_code == 429:
        kind: type[ApiError] = QuotaExceeded if code == "quota_exceeded" else RateLimited
    else:
        kind = _BY_STATUS.get(response.status_code, ApiError)
    error = kind(response.status_code, code, detail, body)
    if isinstance(error, RateLimited | QuotaExceeded):
        error.retry_after_s = float(response.headers.get("retry-after", "1") or 1)
    return error


def _job_body(task: str, params: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    return {"task": task, "params": params or {}, **{k: v for k, v in options.items() if v is not None}}


def _ended(job: dict[str, Any]) -> dict[str, Any]:
    if job["status"] == "failed":
        raise JobFailed(f"job {job['id']} failed: {job.get('error')}", job)
    if job["status"] == "cancelled":
        raise JobCancelled(f"job {job['id']} was cancelled", job)
    return job


class _Client:
    """What the sync and async clients share: where the API is, the key, and when to retry."""

    url: str
    retry_rate_limited: bool
    max_rate_limit_retries: int

    def _configure(
        self, url: str | None, api_key: str | None, retry_rate_limited: bool, max_rate_limit_retries: int
    ) -> dict[str, str]:
        """Settle the URL and retry policy; the headers every call carries."""
        self.url, key = settings(url, api_key)
        self.retry_rate_limited = retry_rate_limited
        self.max_rate_limit_retries = max_rate_limit_retries
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _retry_wait(self, error: ApiError, attempt: int) -> float | None:
        """How long to wait before trying `error`'s call again; None to raise it now."""
        if not (isinstance(error, RateLimited) and self.retry_rate_limited):
            return None
        return error.retry_after_s if attempt < self.max_rate_limit_retries else None


class Lanes(_Client):
    """A client of one Lanes API. Use it as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 10.0,
        retry_rate_limited: bool = False,
        max_rate_limit_retries: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = self._configure(url, api_key, retry_rate_limited, max_rate_limit_retries)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)

    def __enter__(self) -> Lanes:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call of the API: its JSON, or the error it answered as an exception."""
        for attempt in range(self.max_rate_limit_retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ApiUnreachable(
                    f"the Lanes API at {self.url} does not answer ({type(exc).__name__})"
                ) from exc
            if response.is_success:
                return response.json() if response.content else None
            error = _error(response)
            wait = self._retry_wait(error, attempt)
            if wait is None:
                raise error
            time.sleep(wait)
        raise AssertionError("unreachable")

    # -- jobs --------------------------------------------------------------------------------------

    def submit(
        self,
        task: str,
        params: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Submit a job (options: priority, max_retries, delay_s, run_at, depends_on, timeout_s, …)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        found: dict[str, Any] = self.request(
            "POST", "/api/v1/jobs", json=_job_body(task, params, options), headers=headers
        )
        return found

    def get(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.request("GET", f"/api/v1/jobs/{job_id}")
        return found

    def list(self, *, page_size: int = 100, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every job matching `status`, `task`, `priority` (and `tenant`, for admins), newest first."""
        params = {k: v for k, v in filters.items() if v is not None} | {"limit": page_size}
        while True:
            page = self.request("GET", "/api/v1/jobs", params=params)
            yield from page["items"]
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.request("POST", f"/api/v1/jobs/{job_id}/cancel")
        return found

    def retry(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.request("POST", f"/api/v1/jobs/{job_id}/retry")
        return found

    def wait(
        self, job_id: str, *, timeout_s: float | None = None, poll_s: float = 0.2, max_poll_s: float = 2.0
    ) -> dict[str, Any]:
        """The job once it succeeded; `JobFailed`, `JobCancelled`, or `WaitTimeout` after `timeout_s`.

        Polls with backoff, from `poll_s` up to `max_poll_s`.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job["status"] in TERMINAL:
                return _ended(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {job['status']} after {timeout_s:g} s", job)
            time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))
            poll_s = min(max_poll_s, poll_s * 1.5)

    # -- the platform -----------------------------------------------------------------------------

    def queues(self) -> dict[str, Any]:
        found: dict[str, Any] = self.request("GET", "/api/v1/queues")
        return found

    def workers(self) -> Items:
        found: Items = self.request("GET", "/api/v1/workers")
        return found

    def credits(self) -> dict[str, Any]:
        found: dict[str, Any] = self.request("GET", "/api/v1/credits")
        return found

    def schedules(self) -> Items:
        found: Items = self.request("GET", "/api/v1/schedules", params={"limit": 200})["items"]
        return found

    def add_schedule(
        self, name: str, task: str, cron: str, params: dict[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        body = {"name": name, "cron": cron, **_job_body(task, params, options)}
        found: dict[str, Any] = self.request("POST", "/api/v1/schedules", json=body)
        return found

    def update_schedule(self, schedule_id: str, **changes: Any) -> dict[str, Any]:
        found: dict[str, Any] = self.request("PATCH", f"/api/v1/schedules/{schedule_id}", json=changes)
        return found

    def run_schedule(self, schedule_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.request("POST", f"/api/v1/schedules/{schedule_id}/run")
        return found

    def delete_schedule(self, schedule_id: str) -> None:
        self.request("DELETE", f"/api/v1/schedules/{schedule_id}")


class AsyncLanes(_Client):
    """`Lanes`, for asyncio: the same methods, awaited; `list` is an async iterator."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 10.0,
        retry_rate_limited: bool = False,
        max_rate_limit_retries: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = self._configure(url, api_key, retry_rate_limited, max_rate_limit_retries)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout_s, transport=transport
        )

    async def __aenter__(self) -> AsyncLanes:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(self.max_rate_limit_retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ApiUnreachable(
                    f"the Lanes API at {self.url} does not answer ({type(exc).__name__})"
                ) from exc
            if response.is_success:
                return response.json() if response.content else None
            error = _error(response)
            wait = self._retry_wait(error, attempt)
            if wait is None:
                raise error
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def submit(
        self,
        task: str,
        params: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        found: dict[str, Any] = await self.request(
            "POST", "/api/v1/jobs", json=_job_body(task, params, options), headers=headers
        )
        return found

    async def get(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.request("GET", f"/api/v1/jobs/{job_id}")
        return found

    async def list(self, *, page_size: int = 100, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None} | {"limit": page_size}
        while True:
            page = await self.request("GET", "/api/v1/jobs", params=params)
            for job in page["items"]:
                yield job
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.request("POST", f"/api/v1/jobs/{job_id}/cancel")
        return found

    async def retry(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.request("POST", f"/api/v1/jobs/{job_id}/retry")
        return found

    async def wait(
        self, job_id: str, *, timeout_s: float | None = None, poll_s: float = 0.2, max_poll_s: float = 2.0
    ) -> dict[str, Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.get(job_id)
            if job["status"] in TERMINAL:
                return _ended(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {job['status']} after {timeout_s:g} s", job)
            await asyncio.sleep(
                poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic()))
            )
            poll_s = min(max_poll_s, poll_s * 1.5)

    async def queues(self) -> dict[str, Any]:
        found: dict[str, Any] = await self.request("GET", "/api/v1/queues")
        return found

    async def credits(self) -> dict[str, Any]:
        found: dict[str, Any] = await self.request("GET", "/api/v1/credits")
        return found
