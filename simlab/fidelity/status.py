"""The base of every fidelity result model: ``Estimate`` (a number with its 95% CI) and
``SourceStatus`` (an analysis's status and reason). Apart from ``simlab.fidelity.result`` so the
analysis registry can name the base without importing the results that look the registry up."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["Estimate", "SourceStatus", "Status"]

Status = Literal["ok", "not_available", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Estimate(_Model):
    """A point estimate with its 95% interval."""

    value: float
    """Point estimate on the full data."""
    ci_low: float
    """Lower end of the 95% CI (NaN when it could not be computed)."""
    ci_high: float
    """Upper end of the 95% CI."""
    p_value: float | None = None
    """Model-based p-value of value = 0 (or of the stated null), where one exists."""
    n: int
    """Units behind the estimate (participants, events or rows: see the field)."""
    n_failed: int = 0
    """Bootstrap replicates whose refit failed (e.g. a degenerate resample); they are left out of
    the CI, and above ``MAX_FAILED_SHARE`` of the replicates the CI is withheld (NaN)."""
    note: str | None = None
    """Why the CI is withheld, or how the estimate was obtained when that is not the default."""

    @field_validator("value", "ci_low", "ci_high", mode="before")
    @classmethod
    def _null_is_nan(cls, v: Any) -> Any:
        """JSON has no NaN: pydantic writes a withheld CI (NaN) as null, and null reads back as NaN."""
        return math.nan if v is None else v


class SourceStatus(_Model):
    """Status of one analysis for one source."""

    status: Status = "ok"
    """ok / not_available / failed."""
    reason: str | None = None
    """Why it is not ok."""

