"""Keyset pagination, newest first, over any table with `created_at` and `id` columns.

A cursor is the (created_at, id) of the last row of a page, base64-encoded; the next page is every
row strictly older in that order. Cost grows with the page, not with how far back it is.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_
from sqlalchemy.orm import Session

from backend.errors import InvalidInput


def page(
    session: Session, query: Select[Any], model: Any, *, limit: int, cursor: str | None, scalars: bool = True
) -> tuple[list[Any], str | None]:
    """One page of `limit` rows of `query` (newest first) and the cursor of the next, or None:
    the ORM objects of a `select(Model)`, or with `scalars=False` the plain rows of a select of
    columns (which must include `created_at` and `id`)."""
    if cursor is not None:
        created_at, row_id = decode_cursor(cursor)
        # `created_at <= :at` is a range both planners start the index scan from; the OR only
        # sorts out the rows of that very instant.
        query = query.where(
            model.created_at <= created_at, or_(model.created_at < created_at, model.id < row_id)
        )
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query)) if scalars else list(session.execute(query).all())
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def encode_cursor(row: Any) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor names; InvalidInput (`invalid_cursor`) for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not row_id:
            raise ValueError("incomplete cursor")
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("cursor is not one this API gave out", code="invalid_cursor") from None
    return created_at, row_id
