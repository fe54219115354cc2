"""Tenants and API keys: a key is shown once, stored as a digest, and fails at once when revoked."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend import tenants
from backend.db import utcnow
from backend.enums import Plan, Role
from backend.errors import Conflict, InvalidInput
from backend.models import ApiKeyRow
from tests.helpers import ROOT, lanes_env


def test_a_new_key_is_shown_once_and_only_its_digest_and_prefix_are_stored(session: Session) -> None:
    tenant = tenants.create_tenant(session=session, name="acme", plan=Plan.PRO)

    made = tenants.create_key(session=session, tenant=tenant, role=Role.ADMIN, name="ci")

    assert tenants.KEY_PATTERN.fullmatch(made.secret)
    stored = session.scalars(select(ApiKeyRow)).one()
    assert made.secret.startswith(f"lanes_{stored.prefix}_")
    assert stored.secret_hash == tenants.digest(made.secret)
    assert made.secret not in repr([getattr(stored, c.key) for c in ApiKeyRow.__table__.columns])
    assert (stored.role, stored.name, stored.last_used_at, stored.revoked_at) == ("admin", "ci", None, None)


def test_a_live_key_is_recognised_and_its_last_use_recorded(session: Session) -> None:
    tenant = tenants.create_tenant(session=session, name="acme")
    made = tenants.create_key(session=session, tenant=tenant)

    found = tenants.verify_key(session=session, key=made.secret)

    assert found is not None and found.tenant_id == tenant.id and found.role == "member"
    session.refresh(found)
    assert found.last_used_at is not None


def test_a_keys_last_use_is_written_again_only_once_it_is_a_minute_old(session: Session) -> None:
    tenant = tenants.create_tenant(session=session, name="acme")
    made = tenants.create_key(session=session, tenant=tenant)
    tenants.verify_key(session=session, key=made.secret)
    session.expire_all()
    first = session.scalars(select(ApiKeyRow)).one().last_used_at

    again = tenants.verify_key_and_tenant(session=session, key=made.secret)

    assert again is not None and again[1] is not None and again[1].id == tenant.id
    session.expire_all()
    assert session.scalars(select(ApiKeyRow)).one().last_used_at == first  # no write per call
    old = utcnow() - timedelta(seconds=tenants.LAST_USED_RESOLUTION_S)
    session.execute(update(ApiKeyRow).values(last_used_at=old))
    session.commit()
    tenants.verify_key(session=session, key=made.secret)
    session.expire_all()
    stamped = session.scalars(select(ApiKeyRow)).one().last_used_at
    assert stamped is not None and stamped > old


def test_malformed_unknown_wrong_and_revoked_keys_are_all_refused_alike(session: Session) -> None:
    tenant = tenants.create_tenant(session=session, name="acme")
    made = tenants.create_key(session=session, tenant=tenant)
    revoked = tenants.create_key(session=session, tenant=tenant)
    tenants.revoke_key(session=session, prefix=revoked.secret)
    prefix = made.row.prefix
    wrong_secret = f"lanes_{prefix}_{'A' * 43}"
    unknown_prefix = made.secret.replace(prefix, "0" * 12)

    for key in ("", "nonsense", made.secret + "x", wrong_secret, unknown_prefix, revoked.secret):
        assert tenants.verify_key(session=session, key=key) is None, key
    assert tenants.verify_key(session=session, key=made.secret) is not None


def test_tenant_names_are_unique_and_plain(session: Session) -> None:
    tenants.create_tenant(session=session, name="acme")

    with pytest.raises(Conflict):
        tenants.create_tenant(session=session, name="acme")
    for bad in ("", " acme", "a/b", "x" * 101):
        with pytest.raises(InvalidInput):
            tenants.create_tenant(session=session, name=bad)


def admin(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = lanes_env(redis_url="redis://127.0.0.1:1/0", database_url=database_url)
    return subprocess.run(
        [sys.executable, "-m", "backend.admin", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_admin_command_makes_a_tenant_and_prints_its_key_alone_on_the_last_line(
    database_url: str, session: Session
) -> None:
    made = admin(database_url, "create-tenant", "acme", "--plan", "pro")

    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[-1]
    assert tenants.KEY_PATTERN.fullmatch(key), made.stdout
    found = tenants.verify_key(session=session, key=key)
    assert found is not None and found.role == "admin"
    assert tenants.get_tenant(session=session, name_or_id="acme").plan == "pro"

    another = admin(database_url, "create-key", "acme", "--name", "deploys").stdout.splitlines()[-1]
    listed = admin(database_url, "list-keys", "acme").stdout
    assert listed.count("\n") == 2 and key not in listed and another not in listed
    assert f"lanes_{found.prefix}_…" in listed and "deploys" in listed
    assert "acme\tpro\t" in admin(database_url, "list-tenants").stdout

    revoked = admin(database_url, "revoke-key", found.prefix)
    assert revoked.returncode == 0, revoked.stderr
    session.expire_all()
    assert tenants.verify_key(session=session, key=key) is None
    assert tenants.verify_key(session=session, key=another) is not None


def test_the_admin_command_says_what_is_wrong_on_stderr_with_status_1(database_url: str) -> None:
    missing = admin(database_url, "create-key", "nobody")
    taken = [admin(database_url, "create-tenant", "acme") for _ in range(2)][1]

    assert (missing.returncode, missing.stdout) == (1, "")
    assert "tenant 'nobody' not found" in missing.stderr
    assert taken.returncode == 1 and "exists already" in taken.stderr


def test_the_admin_command_changes_a_tenants_plan_and_quotas_and_shows_its_credits(
    database_url: str, session: Session
) -> None:
    admin(database_url, "create-tenant", "acme", "--plan", "free")

    planned = admin(database_url, "set-plan", "acme", "pro")
    own = admin(database_url, "set-quota", "acme", "--daily", "50", "--monthly", "0")
    back = admin(database_url, "set-quota", "acme", "--monthly", "plan")
    bad = admin(database_url, "set-quota", "acme", "--daily", "-1")
    listed = admin(database_url, "list-tenants").stdout

    assert planned.returncode == 0 and "acme: plan pro" in planned.stdout
    assert "daily    0 of 10 used" in planned.stdout and "monthly  0 of 100 used" in planned.stdout
    assert "daily    0 of 50 used" in own.stdout and "monthly  0 of 0 used" in own.stdout
    assert "daily    0 of 50 used" in back.stdout and "monthly  0 of 100 used" in back.stdout
    assert bad.returncode == 2 and "a quota is 0 or more" in bad.stderr
    assert "acme\tpro\tdaily 0 of 50 used; monthly 0 of 100 used\t" in listed
    tenant = tenants.get_tenant(session=session, name_or_id="acme")
    assert (tenant.plan, tenant.daily_quota, tenant.monthly_quota) == ("pro", 50, None)


def test_a_negative_quota_is_refused(session: Session) -> None:
    tenant = tenants.create_tenant(session=session, name="acme")

    with pytest.raises(InvalidInput):
        tenants.change_plan(session=session, tenant=tenant, daily_quota=-1)
