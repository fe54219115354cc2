"""Every setting is documented where people look for it: `.env.example` and the README's table."""

from __future__ import annotations

import pytest

from backend.config import Settings
from tests.helpers import ROOT

ENV_NAMES = {"redis_url": "REDIS_URL", "database_url": "DATABASE_URL"}


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_each_setting_has_a_line_in_env_example_and_a_row_in_the_readme(field: str) -> None:
    variable = ENV_NAMES.get(field, f"LANES_{field.upper()}")

    assert f"\n{variable}=" in (ROOT / ".env.example").read_text()
    assert f"\n| `{variable}` |" in (ROOT / "README.md").read_text()
