"""/api/v1/credits and /api/v1/tenants: what a tenant has left of its quotas; every tenant, for admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from backend import quotas, tenants
from backend.api.auth import CallerDep, PlatformAdminDep, check_tenant_name, get_caller
from backend.api.deps import NowDep, SessionDep, SettingsDep
from backend.errors import NotFound
from backend.schemas import CreditsOut, ErrorOut, TenantOut

router = APIRouter(prefix="/api/v1", tags=["tenants"], dependencies=[Depends(get_caller)])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 422, 429, 503)
}


@router.get("/credits", response_model=CreditsOut, responses=ERRORS)
def get_credits(
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    now: NowDep,
    tenant: Annotated[
        str | None, Query(max_length=200, description="Another tenant's name or id (platform admins).")
    ] = None,
) -> CreditsOut:
    """Show the caller's quota credits: limit, used, remaining and reset time, per day and month."""
    check_tenant_name(tenant)
    row = tenants.get_tenant(session=session, name_or_id=caller.tenant_id)
    if tenant is not None and tenant not in (row.name, row.id):
        if not caller.platform_admin:
            raise NotFound(f"tenant {tenant!r} not found", code="tenant_not_found")
        row = tenants.get_tenant(session=session, name_or_id=tenant)
    return CreditsOut.model_validate(quotas.credits(session=session, tenant=row, settings=settings, now=now))


@router.get("/tenants", response_model=list[TenantOut], responses=ERRORS)
def list_tenants(
    session: SessionDep, settings: SettingsDep, caller: PlatformAdminDep, now: NowDep
) -> list[TenantOut]:
    """List every tenant with its plan and credits (platform admins only)."""
    return [
        TenantOut(
            id=row.id,
            name=row.name,
            plan=row.plan,
            daily_quota=row.daily_quota,
            monthly_quota=row.monthly_quota,
            created_at=row.created_at,
            credits=CreditsOut.model_validate(
                quotas.credits(session=session, tenant=row, settings=settings, now=now)
            ),
        )
        for row in tenants.list_tenants(session=session)
    ]
