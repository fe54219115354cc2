"""The error tree of Lanes. Every error a caller can cause or see descends from `AppError`.

    AppError
    ├── Unauthorized         401  unauthorized
    ├── Forbidden            403  forbidden (a platform admin's route)
    ├── NotFound             404  job_not_found
    ├── Conflict             409
    ├── InvalidInput         422  invalid_params, invalid_priority, invalid_max_retries, …
    │   └── UnknownTask      422  unknown_task
    ├── BadRequest           400  malformed_json, invalid_json_constant, too_deep …
    ├── PayloadTooLarge      413  body_too_large
    ├── RateLimited          429  rate_limited (with Retry-After)
    ├── QuotaExceeded        429  quota_exceeded (with Retry-After and `credits`)
    └── BackendUnavailable   503  redis_unavailable, database_unavailable

They are turned into HTTP answers in one place, `backend.api.errors`, always as
`{"detail": ..., "code": ...}` (plus the error's `extra` fields, and its `headers`). Domain code
raises these, never `HTTPException`.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Raised when Lanes refuses or cannot do what was asked; the root of the tree."""

    status_code = 500
    code = "internal_error"
    #: More top-level fields of the answer's body, beside `detail` and `code`.
    extra: dict[str, Any]
    #: Headers of the answer (`Retry-After`).
    headers: dict[str, str]

    def __init__(self, detail: Any, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = {}
        self.headers = {}
        if code is not None:
            self.code = code


class Unauthorized(AppError):
    """Raised when a request has no API key, or one that is malformed, unknown or revoked."""

    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    """Raised when a valid key asks for what only a platform admin may see or do."""

    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    """Raised when a job, task or other named thing does not exist (or is not the caller's)."""

    status_code = 404
    code = "not_found"


class Conflict(AppError):
    """Raised when the request clashes with the current state of a resource."""

    status_code = 409
    code = "conflict"


class InvalidInput(AppError):
    """Raised when a well-formed request asks for something invalid (bad params, priority…)."""

    status_code = 422
    code = "invalid_input"


class BadRequest(AppError):
    """Raised when a request body cannot be read as the JSON Lanes accepts."""

    status_code = 400
    code = "bad_request"


class PayloadTooLarge(AppError):
    """Raised when a request body is over `LANES_MAX_BODY_BYTES`."""

    status_code = 413
    code = "body_too_large"


class RateLimited(AppError):
    """Raised when a tenant (or an unauthenticated client) calls more often than its rate limit."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, *, retry_after_s: int) -> None:
        super().__init__(f"Rate limit exceeded. Retry after {retry_after_s} seconds.")
        self.headers = {"Retry-After": str(retry_after_s)}


class QuotaExceeded(AppError):
    """Raised when a submit would take more jobs than the tenant's daily or monthly quota leaves."""

    status_code = 429
    code = "quota_exceeded"

    def __init__(self, detail: str, *, credits: dict[str, Any], retry_after_s: int) -> None:
        super().__init__(detail)
        self.extra = {"credits": credits}
        self.headers = {"Retry-After": str(retry_after_s)}


class BackendUnavailable(AppError):
    """Raised when Redis or the database cannot be reached; the caller may try again."""

    status_code = 503
    code = "backend_unavailable"


class UnknownTask(InvalidInput):
    """Raised when a job names a task that is not in the registry (also inside workers)."""

    code = "unknown_task"
