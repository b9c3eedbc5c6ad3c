"""docs/glossary.md defines every column of the run store: one word per thing, written down."""

from __future__ import annotations

import re

from simlab.records import TABLES
from tests.conftest import REPO


def test_every_stored_column_is_in_the_glossary() -> None:
    text = (REPO / "docs" / "glossary.md").read_text(encoding="utf-8")
    defined = set(re.findall(r"`(\w+)`", text))
    missing = sorted({c.name for t in TABLES.values() for c in t.columns} - defined)
    assert not missing, f"columns with no entry in docs/glossary.md: {missing}"
