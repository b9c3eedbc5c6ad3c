"""The error a model fit raises when the data cannot support it, and its wording for a researcher.

Analyses record a failed fit with ``reason_for(exc)``, so the reason names the cause in the data
before the technical detail."""

from __future__ import annotations

import numpy as np

__all__ = ["FitError", "reason_for"]


class FitError(RuntimeError):
    """A model that could not be fitted (singular information matrix, no convergence)."""


def reason_for(exc: BaseException) -> str:
    """Why an analysis failed, in words a researcher can act on; the technical detail follows."""
    if isinstance(exc, FitError):
        return str(exc)
    text, name = str(exc), type(exc).__name__
    low = text.lower()
    if isinstance(exc, np.linalg.LinAlgError) or "singular" in low:
        why = ("the model could not be fitted: a predictor does not vary, or repeats another, in these data "
               "(e.g. one arm, one position or one turn only)")
    elif "separation" in low:
        why = "the model could not be fitted: some choices are perfectly predicted (perfect separation)"
    elif "converge" in low:
        why = "the model did not converge on these data"
    elif isinstance(exc, MemoryError):
        why = "the analysis ran out of memory"
    else:
        why = "the analysis stopped on an unexpected error; please report it with the command that produced it"
    return f"{why} ({name}: {text})" if text else f"{why} ({name})"
