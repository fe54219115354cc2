"""The one place where errors become HTTP answers, always `{"detail": ..., "code": ...}`."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import to_jsonable_python
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.errors import AppError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_response(
    status: int,
    detail: Any,
    code: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = {"detail": to_jsonable_python(detail), "code": code, **to_jsonable_python(_iso(extra or {}))}
    return JSONResponse(body, status_code=status, headers=headers)


def _iso(value: Any) -> Any:
    """Timestamps as the API writes them everywhere (`…+00:00`), inside dicts and lists too."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _iso(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_iso(item) for item in value]
    return value


def validation_code(errors: list[Any]) -> str:
    """`invalid_<field>` for the first field at fault (`invalid_priority`), else `invalid_request`."""
    for error in errors:
        if error.get("type") == "extra_forbidden":
            return "unknown_field"
        loc = [
            part for part in error.get("loc", ()) if isinstance(part, str) and part not in {"body", "query"}
        ]
        if error.get("type") == "json_invalid":
            return "malformed_json"
        if loc:
            return f"invalid_{loc[0]}"
    return "invalid_request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer", **exc.headers} if exc.status_code == 401 else exc.headers
        return error_response(exc.status_code, exc.detail, exc.code, headers, exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in {"loc", "msg", "type"}} for e in exc.errors()]
        return error_response(422, errors, validation_code(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, exc.detail, _HTTP_CODES.get(exc.status_code, "http_error"))

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis error answered with 503: %s", exc)
        return error_response(503, "Redis is unavailable; try again shortly", "redis_unavailable")

    @app.exception_handler(DataError)
    async def bad_value(_: Request, exc: DataError) -> JSONResponse:
        return error_response(422, "a value cannot be stored as given", "invalid_value")

    @app.exception_handler(OperationalError)
    async def database_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error answered with 503: %s", exc.orig)
        return error_response(503, "the database is unavailable; try again shortly", "database_unavailable")

    @app.exception_handler(DBAPIError)
    async def database_error(_: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return error_response(
                503, "the database is unavailable; try again shortly", "database_unavailable"
            )
        log.exception("database error", exc_info=exc)
        return error_response(500, "internal error", "internal_error")

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal error", "internal_error")
