"""`python -m backend.admin`: make tenants and their API keys (`make admin ARGS='…'`).

    create-tenant NAME [--plan PLAN] [--role admin|member]   the tenant and its first key
    list-tenants
    create-key TENANT [--role admin|member] [--name LABEL]   another key for a tenant
    list-keys TENANT                                          prefixes, roles, last use, revoked
    revoke-key PREFIX                                         the key fails from now on

A new key is printed alone on the last line, so a script can capture it with `tail -n 1`. It is
shown only then: only its digest is stored. Errors go to stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.orm import Session

from backend import tenants
from backend.config import get_settings
from backend.db import make_engine, make_sessionmaker
from backend.enums import Plan, Role
from backend.errors import AppError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m backend.admin", description="Tenants and API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-tenant", help="a tenant and its first key")
    create.add_argument("name")
    create.add_argument("--plan", choices=[p.value for p in Plan], default=Plan.FREE.value)
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.ADMIN.value)
    commands.add_parser("list-tenants", help="every tenant and its plan")
    key = commands.add_parser("create-key", help="another key for a tenant")
    key.add_argument("tenant", help="tenant name or id")
    key.add_argument("--role", choices=[r.value for r in Role], default=Role.MEMBER.value)
    key.add_argument("--name", help="a label for the key")
    keys = commands.add_parser("list-keys", help="a tenant's keys (prefixes only)")
    keys.add_argument("tenant", help="tenant name or id")
    revoke = commands.add_parser("revoke-key", help="revoke a key by its prefix")
    revoke.add_argument("prefix")
    return parser.parse_args(argv)


def run(session: Session, args: argparse.Namespace) -> list[str]:
    """The lines to print for one command; a new key is the last line, alone."""
    if args.command == "create-tenant":
        tenant = tenants.create_tenant(session=session, name=args.name, plan=Plan(args.plan))
        made = tenants.create_key(session=session, tenant=tenant, role=Role(args.role))
        return [f"tenant {tenant.name} ({tenant.id}), plan {tenant.plan}; {made.row.role} key:", made.secret]
    if args.command == "list-tenants":
        return [
            f"{t.name}\t{t.plan}\t{t.id}\t{t.created_at.isoformat()}"
            for t in tenants.list_tenants(session=session)
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
    engine = make_engine(settings.database_url, echo=settings.sql_echo)
    try:
        with make_sessionmaker(engine)() as session:
            lines = run(session, args)
    except AppError as exc:
        print(f"lanes admin: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
