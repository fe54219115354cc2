"""Tenants and their API keys. The domain, with no FastAPI in it.

A key reads `lanes_<prefix>_<secret>`. The prefix (12 hex digits) is stored as it is and shown in
lists, so a key can be named without being revealed; of the whole key only a SHA-256 digest is
stored. The secret carries 256 random bits, so a plain digest is safe against guessing (a slow
password hash buys nothing for a random key), and the digests are compared in constant time. A
key is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.enums import Plan, Role
from backend.errors import Conflict, InvalidInput, NotFound
from backend.models import ApiKeyRow, TenantRow

KEY_PREFIX = "lanes"
PREFIX_HEX_DIGITS = 12
SECRET_BYTES = 32
#: `lanes_<12 hex>_<43 url-safe base64 characters>`
KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{{PREFIX_HEX_DIGITS}}})_([A-Za-z0-9_-]{{43}})$")
TENANT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: Compared against when no key has the prefix, so an unknown key costs what a wrong one does.
_NO_KEY_DIGEST = hashlib.sha256(b"no such key").hexdigest()
#: A key's `last_used_at` is written again only once it is this old: stamping it at every call was a
#: write transaction per request, which on SQLite also serialised the API's requests.
LAST_USED_RESOLUTION_S = 60

#: A key and its tenant by the key's prefix, built once: building the join and its WHERE at every
#: call took a third of `verify_key_and_tenant` (about 300 to 190 µs of CPU a call on SQLite).
_KEY_AND_TENANT = (
    select(ApiKeyRow, TenantRow)
    .outerjoin(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
    .where(ApiKeyRow.prefix == bindparam("prefix"))
)


class Unchanged:
    """The value of an argument left as it is (None means 'clear it')."""


UNCHANGED = Unchanged()


@dataclass(frozen=True)
class NewKey:
    """A key just made: `secret` is the whole key, shown this once and never stored."""

    row: ApiKeyRow
    secret: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_tenant(*, session: Session, name: str, plan: Plan = Plan.FREE) -> TenantRow:
    """A new tenant; `InvalidInput` for a bad name, `Conflict` if the name is taken."""
    if TENANT_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidInput(
            f"tenant name {name!r}: 1 to 100 letters, digits, '.', '_' or '-', beginning with a letter"
            " or digit",
            code="invalid_tenant_name",
        )
    row = TenantRow(id=uuid.uuid4().hex, name=name, plan=Plan(plan).value, created_at=utcnow())
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a tenant named {name!r} exists already", code="tenant_exists") from None
    return row


def ensure_tenant(*, session: Session, name: str, plan: Plan) -> TenantRow:
    """The tenant called `name`, made on the `plan` if it does not exist yet."""
    try:
        return get_tenant(session=session, name_or_id=name)
    except NotFound:
        return create_tenant(session=session, name=name, plan=plan)


def get_tenant(*, session: Session, name_or_id: str) -> TenantRow:
    row = session.scalar(
        select(TenantRow).where((TenantRow.name == name_or_id) | (TenantRow.id == name_or_id))
    )
    if row is None:
        raise NotFound(f"tenant {name_or_id!r} not found", code="tenant_not_found")
    return row


def change_plan(
    *,
    session: Session,
    tenant: TenantRow,
    plan: Plan | None = None,
    daily_quota: int | Unchanged | None = UNCHANGED,
    monthly_quota: int | Unchanged | None = UNCHANGED,
) -> TenantRow:
    """Give `tenant` another plan, or quotas of its own (None: back to the plan's); the rest stays."""
    for name, value in (("daily_quota", daily_quota), ("monthly_quota", monthly_quota)):
        if isinstance(value, int) and value < 0:
            raise InvalidInput(f"{name} must be 0 or more, not {value}", code=f"invalid_{name}")
    if plan is not None:
        tenant.plan = Plan(plan).value
    if not isinstance(daily_quota, Unchanged):
        tenant.daily_quota = daily_quota
    if not isinstance(monthly_quota, Unchanged):
        tenant.monthly_quota = monthly_quota
    session.commit()
    return tenant


def list_tenants(*, session: Session) -> list[TenantRow]:
    return list(session.scalars(select(TenantRow).order_by(TenantRow.created_at, TenantRow.id)))


def create_key(
    *, session: Session, tenant: TenantRow, role: Role = Role.MEMBER, name: str | None = None
) -> NewKey:
    """A new key for `tenant`: stored as its prefix and digest, returned whole this once."""
    prefix = secrets.token_hex(PREFIX_HEX_DIGITS // 2)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKeyRow(
        id=uuid.uuid4().hex,
        tenant_id=tenant.id,
        role=Role(role).value,
        prefix=prefix,
        secret_hash=digest(key),
        name=name,
        created_at=utcnow(),
    )
    session.add(row)
    session.commit()
    return NewKey(row=row, secret=key)


def list_keys(*, session: Session, tenant: TenantRow) -> list[ApiKeyRow]:
    query = select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant.id).order_by(ApiKeyRow.created_at)
    return list(session.scalars(query))


def revoke_key(*, session: Session, prefix: str) -> ApiKeyRow:
    """Revoke the key with `prefix` (the `lanes_<prefix>_` part also works); it fails at once."""
    prefix = prefix.removeprefix(f"{KEY_PREFIX}_").split("_", 1)[0]
    row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix))
    if row is None:
        raise NotFound(f"no key has the prefix {prefix!r}", code="key_not_found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def verify_key(*, session: Session, key: str) -> ApiKeyRow | None:
    """The live key that `key` is, or None (malformed, unknown, wrong secret or revoked alike).

    A key that passes gets its `last_used_at` stamped, to within `LAST_USED_RESOLUTION_S`.
    """
    found = verify_key_and_tenant(session=session, key=key)
    return found[0] if found is not None else None


def verify_key_and_tenant(*, session: Session, key: str) -> tuple[ApiKeyRow, TenantRow | None] | None:
    """`verify_key`, with the key's tenant read in the same query (None if the tenant is gone)."""
    match = KEY_PATTERN.fullmatch(key)
    found = None
    if match:
        found = session.execute(_KEY_AND_TENANT, {"prefix": match.group(1)}).first()
    row, tenant = found if found is not None else (None, None)
    expected = row.secret_hash if row is not None else _NO_KEY_DIGEST
    if not hmac.compare_digest(digest(key), expected) or row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= timedelta(seconds=LAST_USED_RESOLUTION_S):
        session.execute(update(ApiKeyRow).where(ApiKeyRow.id == row.id).values(last_used_at=now))
        session.commit()
    return row, tenant


def scope_for(*, session: Session, own: str, admin: bool, asked: str | None) -> str | None:
    """The tenant id a query is limited to: a platform admin's choice (all when None), else the caller's own.

    Naming another tenant is `NotFound` for anyone but a platform admin, like another tenant's job.
    """
    if asked is None:
        return None if admin else own
    if admin:
        return get_tenant(session=session, name_or_id=asked).id
    tenant = session.get(TenantRow, own)
    if tenant is None or asked not in (tenant.id, tenant.name):
        raise NotFound(f"tenant {asked!r} not found", code="tenant_not_found")
    return own


#: The tenant `make demo` makes: its keys are printed on a terminal, and never belong in production.
DEMO_TENANT = "demo"


def refuse_demo_keys(engine: Any) -> None:
    """Refuse to start (RuntimeError) while the demo tenant has a live key: LANES_ENV=production."""
    with Session(engine) as session:
        live = session.scalar(
            select(ApiKeyRow.prefix)
            .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
            .where(TenantRow.name == DEMO_TENANT, ApiKeyRow.revoked_at.is_(None))
            .limit(1)
        )
    if live is not None:
        raise RuntimeError(
            f"LANES_ENV=production refuses to start while the {DEMO_TENANT!r} tenant has a live key"
            f" (lanes_{live}_…): revoke it with `python -m backend.admin revoke-key {live}`"
        )
