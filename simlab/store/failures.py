"""Failed sessions grouped by cause, so the end-of-run summary shows each way of failing once, with a
count and an example, instead of one line per failed session."""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

__all__ = ["FailureGroup", "group_failures"]


class FailureGroup(BaseModel):
    """Failed sessions that failed the same way: how many, and one of them as the example."""

    model_config = ConfigDict(extra="forbid")
    error_type: str
    reason: str
    """The example's reason as recorded."""
    count: int
    example: str
    """The example's conversation id."""


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def group_failures(rows: Iterable[tuple[str, str, str]]) -> list[FailureGroup]:
    """(conversation_id, error_type, reason) rows → groups of one cause, largest first.

    Reasons that differ only in quoted text and numbers (the raw reply, a column, a time) are
    one cause.
    """
    groups: dict[tuple[str, str], FailureGroup] = {}
    for key, error_type, reason in rows:
        norm = _NUMBER.sub("N", _QUOTED.sub("'…'", reason or ""))[:300]
        g = groups.get((error_type, norm))
        if g is None:
            groups[(error_type, norm)] = FailureGroup(error_type=error_type, reason=reason or "", count=1, example=key)
        else:
            g.count += 1
    return sorted(groups.values(), key=lambda g: (-g.count, g.example))
