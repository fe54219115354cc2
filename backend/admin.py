"""`python -m backend.admin`: make tenants and their API keys (`make admin ARGS='…'`).

    create-tenant NAME [--plan PLAN] [--role admin|member]   the tenant and its first key
    list-tenants                                              name, plan, quotas, jobs today / this month
    set-plan TENANT PLAN                                      free, pro, elite or unlimited
    set-quota TENANT [--daily N|plan] [--monthly N|plan]      the tenant's own quotas ('plan': the plan's)
    credits TENANT                                            its quotas, used and left, and when they reset
    create-key TENANT [--role admin|member] [--name LABEL]   another key for a tenant
    list-keys TENANT                                          prefixes, roles, last use, revoked
    revoke-key PREFIX                                         the key fails from now on

A new key is printed alone on the last line, so a script can capture it with `tail -n 1`. It is
shown only then: only its digest is stored. Errors go to stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy.orm import Session

from backend import quotas, tenants
from backend.config import Settings, get_settings
from backend.db import engine_for, make_sessionmaker, utcnow
from backend.enums import Plan, Role
from backend.errors import AppError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m backend.admin", description="Tenants and API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-tenant", help="a tenant and its first key")
    create.add_argument("name")
    create.add_argument("--plan", choices=[p.value for p in Plan], default=Plan.FREE.value)
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.ADMIN.value)
    commands.add_parser("list-tenants", help="every tenant, its plan, quotas and use")
    plan = commands.add_parser("set-plan", help="move a tenant to another plan")
    plan.add_argument("tenant", help="tenant name or id")
    plan.add_argument("plan", choices=[p.value for p in Plan])
    quota = commands.add_parser("set-quota", help="a tenant's own daily or monthly quota")
    quota.add_argument("tenant", help="tenant name or id")
    quota.add_argument("--daily", type=_quota, help="jobs a UTC day, or 'plan' for the plan's")
    quota.add_argument("--monthly", type=_quota, help="jobs a UTC month, or 'plan' for the plan's")
    credit = commands.add_parser("credits", help="a tenant's quotas, used and left")
    credit.add_argument("tenant", help="tenant name or id")
    key = commands.add_parser("create-key", help="another key for a tenant")
    key.add_argument("tenant", help="tenant name or id")
    key.add_argument("--role", choices=[r.value for r in Role], default=Role.MEMBER.value)
    key.add_argument("--name", help="a label for the key")
    keys = commands.add_parser("list-keys", help="a tenant's keys (prefixes only)")
    keys.add_argument("tenant", help="tenant name or id")
    revoke = commands.add_parser("revoke-key", help="revoke a key by its prefix")
    revoke.add_argument("prefix")
    return parser.parse_args(argv)


def _quota(text: str) -> int | str:
    if text == "plan":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of jobs nor 'plan'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a quota is 0 or more, not {value}")
    return value


def _quota_change(value: int | str | None) -> Any:
    """`--daily`/`--monthly` as `change_plan` takes them: left out, 'plan' (None) or a number."""
    if value is None:
        return tenants.UNCHANGED
    return None if value == "plan" else value


def _used(state: dict[str, Any]) -> str:
    """`3 of 10 used` (`3 used, no limit`) for one period of a credits report."""
    return (
        f"{state['used']} used, no limit"
        if state["limit"] is None
        else f"{state['used']} of {state['limit']} used"
    )


def _credits_line(session: Session, tenant: Any, settings: Settings) -> str:
    report = quotas.credits(session=session, tenant=tenant, settings=settings, now=utcnow())
    return "; ".join(f"{period} {_used(report[period])}" for period in ("daily", "monthly"))


def run(session: Session, args: argparse.Namespace, settings: Settings | None = None) -> list[str]:
    """The lines to print for one command; a new key is the last line, alone."""
    settings = settings or get_settings()
    if args.command == "create-tenant":
        tenant = tenants.create_tenant(session=session, name=args.name, plan=Plan(args.plan))
        made = tenants.create_key(session=session, tenant=tenant, role=Role(args.role))
        return [f"tenant {tenant.name} ({tenant.id}), plan {tenant.plan}; {made.row.role} key:", made.secret]
    if args.command == "list-tenants":
        return [
            f"{t.name}\t{t.plan}\t{_credits_line(session, t, settings)}\t{t.id}\t{t.created_at.isoformat()}"
            for t in tenants.list_tenants(session=session)
        ]
    if args.command in ("set-plan", "set-quota", "credits"):
        tenant = tenants.get_tenant(session=session, name_or_id=args.tenant)
        if args.command == "set-plan":
            tenants.change_plan(session=session, tenant=tenant, plan=Plan(args.plan))
        elif args.command == "set-quota":
            tenants.change_plan(
                session=session,
                tenant=tenant,
                daily_quota=_quota_change(args.daily),
                monthly_quota=_quota_change(args.monthly),
            )
        report = quotas.credits(session=session, tenant=tenant, settings=settings, now=utcnow())
        return [f"{tenant.name}: plan {tenant.plan}"] + [
            f"  {period:<8} {_used(report[period])}, resets {report[period]['resets_at'].isoformat()}"
            for period in ("daily", "monthly")
        ]
    if args.command == "create-key":
        tenant = tenants.get_tenant(session=session, name_or_id=args.tenant)
        made = tenants.create_key(session=session, tenant=tenant, role=Role(args.role), name=args.name)
        return [f"{made.row.role} key for {tenant.name}:", made.secret]
    if args.command == "list-keys":
        tenant = tenants.get_tenant(session=session, name_or_id=args.tenant)
        return [
            f"{tenants.KEY_PREFIX}_{k.prefix}_…\t{k.role}\t{k.name or ''}\t"
            f"last used {k.last_used_at.isoformat() if k.last_used_at else 'never'}\t"
            f"{'revoked ' + k.revoked_at.isoformat() if k.revoked_at else 'live'}"
            for k in tenants.list_keys(session=session, tenant=tenant)
        ]
    row = tenants.revoke_key(session=session, prefix=args.prefix)
    return [f"revoked {tenants.KEY_PREFIX}_{row.prefix}_…"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    engine = engine_for(settings)
    try:
        with make_sessionmaker(engine)() as session:
            lines = run(session, args, settings)
    except AppError as exc:
        print(f"lanes admin: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
