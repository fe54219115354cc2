"""`python -m backend.migrate`: bring the database at DATABASE_URL (or --url) to the newest schema."""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


def alembic_config(url: str | None = None, *, quiet: bool = False) -> Config:
    config = Config(str(ALEMBIC_INI))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if quiet:
        config.attributes["skip_logging"] = True
    return config


def upgrade(url: str | None = None, *, revision: str = "head", quiet: bool = False) -> None:
    """Run Alembic's `upgrade` against `url` (Settings' DATABASE_URL when None)."""
    command.upgrade(alembic_config(url, quiet=quiet), revision)


def downgrade(url: str | None = None, *, revision: str = "base", quiet: bool = False) -> None:
    """Run Alembic's `downgrade` against `url` (Settings' DATABASE_URL when None)."""
    command.downgrade(alembic_config(url, quiet=quiet), revision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="database URL (default: DATABASE_URL)")
    parser.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args()
    upgrade(args.url, revision=args.revision)


if __name__ == "__main__":
    main()
