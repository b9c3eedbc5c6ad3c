"""Analysis 2, individual agreement: each simulated source against the human of the same participant,
the human ceiling, and the controls (persona placebo, simulator retest, variance split), one module each."""

from __future__ import annotations

from simlab.fidelity.analyses.agreement.analysis import agreement

__all__ = ["agreement"]
