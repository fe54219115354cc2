"""Idempotency keys: the same key and body within the key's lifetime mean the same job.

A submit that carries a key stores it on the job's row with a hash of the request and an expiry
(`LANES_IDEMPOTENCY_TTL_S`). A later submit with that key, while it lives, gets the first job back
when its hash matches, and `Conflict` (`idempotency_conflict`) when it does not. Keys are per
tenant: the unique index `ux_jobs_tenant_idempotency_key` decides between concurrent submits of
one tenant: one INSERT wins, the others roll back and answer with the winner's job (see
`backend.jobs.submit`). Once a key has expired, the next submit with it takes it over: it clears
the key from the old row in the same transaction that inserts the new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.errors import Conflict, InvalidInput
from backend.models import JobRow

#: The longest key a client may send (the column is VARCHAR(200)).
MAX_KEY_LENGTH = 200


def check_key(key: str) -> str:
    """The key, if it is 1–200 printable ASCII characters; else `InvalidInput`."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= char <= "~" for char in key):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            code="invalid_idempotency_key",
        )
    return key


def body_hash(body: Mapping[str, Any]) -> str:
    """sha256 of the request's canonical JSON (sorted keys, no spaces, ASCII)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_replay(
    *, session: Session, key: str, digest: str, now: datetime, tenant_id: str | None = None
) -> JobRow | None:
    """The live job that `key` already names, if its body matched; None when the key is free.

    Raises `Conflict` (`idempotency_conflict`) for a live key used with a different body. An
    expired key is cleared from its old row here, uncommitted: the caller's INSERT of the new
    row commits both, or neither.
    """
    owner = JobRow.tenant_id.is_(None) if tenant_id is None else JobRow.tenant_id == tenant_id
    row = session.scalars(select(JobRow).where(JobRow.idempotency_key == key, owner)).first()
    if row is None:
        return None
    if row.idempotency_expires_at is not None and row.idempotency_expires_at <= now:
        session.execute(
            update(JobRow)
            .where(JobRow.id == row.id, JobRow.idempotency_key == key)
            .values(idempotency_key=None)
            .execution_options(synchronize_session=False)
        )
        return None
    if row.idempotency_hash != digest:
        raise Conflict(
            {
                "message": "this Idempotency-Key was used with a different request",
                "job_id": row.id,
            },
            code="idempotency_conflict",
        )
    return row
