"""Who is calling: the API key of a request, as a `Caller` the routes scope their queries with.

Every `/api/v1` route but health asks for a key, as `Authorization: Bearer <key>` or
`X-API-Key: <key>`. A missing, malformed, unknown or revoked key gets the same 401, with no hint
which. An admin key of the operator's tenant (`LANES_OPERATOR_TENANT`) is a platform admin and sees
every tenant; any other key sees its own tenant only, and another tenant's job or schedule is 404.

Authenticating is also where a call is counted against its rate limit (`backend.api.ratelimit`):
by tenant once the key is verified, by client address when it is not (a 429 then answers before
the 401 would).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from backend import tenants
from backend.api.deps import ContextDep, SessionDep
from backend.api.ratelimit import LimitName
from backend.enums import Role
from backend.errors import Forbidden, NotFound, Unauthorized
from backend.models import TenantRow

UNAUTHORIZED = "a valid API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


@dataclass(frozen=True)
class Caller:
    """The tenant and role a request acts for."""

    tenant_id: str
    tenant_name: str
    role: Role
    key_prefix: str
    platform_admin: bool
    #: The tenant's row as the request's session loaded it. Held so that the domain reading it again
    #: in that session (a submit's quota) finds it there: the session keeps only weak references.
    tenant: TenantRow | None = field(default=None, repr=False, compare=False)

    @property
    def scope(self) -> str | None:
        """The tenant id every query is limited to; None for a platform admin, who sees all."""
        return None if self.platform_admin else self.tenant_id

    @property
    def label(self) -> str:
        """How the caller is recorded (`cancelled_by`, `created_by`)."""
        return f"{self.tenant_name}:{tenants.KEY_PREFIX}_{self.key_prefix}"


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


def get_caller(request: Request, context: ContextDep, session: SessionDep) -> Caller:
    # The app's objects come from the context itself rather than a dependency each: every
    # dependency costs FastAPI's resolution on each call of every route (this one runs on all).
    settings, rate_limits = context.settings, context.rate_limits
    key = presented_key(request)
    row, tenant = (tenants.verify_key_and_tenant(session=session, key=key) if key else None) or (None, None)
    if row is None or tenant is None:
        address = rate_limits.client_address(request)
        rate_limits.admit(request, who=f"address:{address}", name=LimitName.DEFAULT)
        raise Unauthorized(UNAUTHORIZED)
    rate_limits.admit(request, who=f"tenant:{tenant.id}")
    role = Role(row.role)
    return Caller(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        role=role,
        key_prefix=row.prefix,
        platform_admin=tenant.name == settings.operator_tenant and role == Role.ADMIN,
        tenant=tenant,
    )


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_platform_admin(caller: CallerDep) -> Caller:
    """The caller, if it is a platform admin; `Forbidden` for every other key."""
    if not caller.platform_admin:
        raise Forbidden("only a platform admin (an admin key of the operator's tenant) may do this")
    return caller


PlatformAdminDep = Annotated[Caller, Depends(get_platform_admin)]


def check_tenant_name(asked: str | None) -> None:
    """`NotFound` for a `tenant` that no tenant's name or id can be, before SQL sees it.

    PostgreSQL fails on a NUL character in a query where SQLite only finds nothing; checked here,
    both answer 404.
    """
    if asked is not None and tenants.TENANT_NAME_PATTERN.fullmatch(asked) is None:
        raise NotFound(f"tenant {asked!r} not found", code="tenant_not_found")
