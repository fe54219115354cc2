"""ASGI middleware that reads request bodies before the app does, and refuses hostile ones.

- over `max_body_bytes`: 413 `body_too_large` (by Content-Length, or while streaming);
- JSON bodies that are not UTF-8 (`invalid_utf8`), not JSON (`malformed_json`), use `NaN` or
  `Infinity` (`invalid_json_constant`), nest deeper than `max_json_depth` (`too_deep`), or carry
  lone surrogates (`invalid_unicode`): 400.

The body is then handed on to the app unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api.errors import error_response
from backend.errors import BadRequest, PayloadTooLarge

_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"JSON constant {name} is not accepted", code="invalid_json_constant")


def check_json(body: bytes, *, max_depth: int) -> None:
    """Raise BadRequest unless `body` is strict JSON within `max_depth` levels."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8", code="invalid_utf8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at position {exc.pos}", code="malformed_json"
        ) from None
    except RecursionError:
        raise BadRequest(f"JSON nests deeper than {max_depth} levels", code="too_deep") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise BadRequest(f"JSON nests deeper than {max_depth} levels", code="too_deep")
            children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
            for key, child in children:
                if key is not None:
                    stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("JSON string holds a lone surrogate", code="invalid_unicode") from None


class BodyGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
            if body and _is_json(scope):
                check_json(body, max_depth=self.max_json_depth)
        except (BadRequest, PayloadTooLarge) as exc:
            response = error_response(exc.status_code, exc.detail, exc.code)
            await response(scope, receive, send)
            return

        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise BadRequest("Content-Length is not a number", code="bad_request") from None
                if declared > self.max_body_bytes:
                    raise PayloadTooLarge(f"request body over {self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True  # FastAPI reads a body without a content type as JSON too
