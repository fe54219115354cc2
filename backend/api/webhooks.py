"""/api/v1/jobs/{id}/webhooks and /api/v1/webhooks/secret: a job's deliveries, and the signing secret."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status

from backend import jobs, webhooks
from backend.api.auth import Caller, CallerDep, get_caller
from backend.api.deps import RedisDep, SessionDep, SettingsDep
from backend.enums import Role
from backend.errors import Forbidden, NotFound
from backend.models import TenantRow
from backend.schemas import ErrorOut, WebhookDeliveryOut, WebhookSecretOut

router = APIRouter(prefix="/api/v1", tags=["webhooks"], dependencies=[Depends(get_caller)])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}
JobId = Annotated[str, Path(max_length=200, pattern=r"^[A-Za-z0-9_-]{1,64}$")]


@router.get("/jobs/{job_id}/webhooks", response_model=list[WebhookDeliveryOut], responses=ERRORS)
def list_deliveries(job_id: JobId, session: SessionDep, caller: CallerDep) -> list[WebhookDeliveryOut]:
    """List every attempt to deliver the job's webhook events, oldest first."""
    row = jobs.get_job(session=session, job_id=job_id, tenant_id=caller.scope)
    return [WebhookDeliveryOut.model_validate(d) for d in webhooks.deliveries(session=session, job_id=row.id)]


@router.post(
    "/jobs/{job_id}/webhooks/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    responses=ERRORS,
)
def redeliver(
    job_id: JobId, session: SessionDep, redis: RedisDep, settings: SettingsDep, caller: CallerDep
) -> dict[str, str]:
    """Send an ended job's event again, under the same `webhook-id`."""
    row = jobs.get_job(session=session, job_id=job_id, tenant_id=caller.scope)
    return {"event_id": webhooks.redeliver(session=session, redis=redis, settings=settings, row=row)}


@router.get("/webhooks/secret", response_model=WebhookSecretOut, responses=ERRORS)
def get_secret(session: SessionDep, settings: SettingsDep, caller: CallerDep) -> WebhookSecretOut:
    """Show the secret that signs the caller's tenant's webhooks (admin keys only)."""
    tenant = _own_tenant(session, caller)
    return WebhookSecretOut.model_validate(
        webhooks.secret_view(session=session, tenant=tenant, settings=settings)
    )


@router.post("/webhooks/secret/rotate", response_model=WebhookSecretOut, responses=ERRORS)
def rotate_secret(session: SessionDep, settings: SettingsDep, caller: CallerDep) -> WebhookSecretOut:
    """Make a new signing secret; the old one keeps signing for LANES_WEBHOOK_SECRET_GRACE_S (admin keys)."""
    tenant = _own_tenant(session, caller)
    webhooks.rotate_secret(session=session, tenant=tenant)
    return WebhookSecretOut.model_validate(
        webhooks.secret_view(session=session, tenant=tenant, settings=settings)
    )


def _own_tenant(session: SessionDep, caller: Caller) -> TenantRow:
    if caller.role != Role.ADMIN:
        raise Forbidden("only an admin key of the tenant may see or rotate its webhook secret")
    tenant = session.get(TenantRow, caller.tenant_id)
    if tenant is None:
        raise NotFound("tenant not found", code="tenant_not_found")
    return tenant
