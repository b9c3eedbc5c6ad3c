"""Calibration of the trait comparison: source × trait interaction (sim − human log-odds per 1 SD
of the trait). Generator: ``hierarchy.choices`` with one autograded trait per reply."""

from __future__ import annotations

from functools import lru_cache, partial

from simlab.fidelity.calibration import Case, Measured
from simlab.fidelity.calibration.hierarchy import choices, large_sample_truth
from simlab.tables import Tables

__all__ = ["CASES"]

N_BOOT = 100  # percentile CIs; the p-values are analytic (cluster-robust) and do not depend on it
STRENGTH = (0.0, 0.4, 0.8, 1.2)


def _interaction(t: Tables, seed: int, n_boot: int = N_BOOT) -> Measured:
    from simlab.fidelity.analyses.traits import traits

    est = traits(t, n_boot=n_boot, seed=seed).interaction.get("sim", {}).get("sycophancy")
    return Measured(est, est.p_value if est is not None else None)


def _value(t: Tables) -> float:
    m = _interaction(t, 0, 1)
    assert m.estimate is not None
    return m.estimate.value


def _slopes(seed: int, effect: bool, n: int = 40) -> Tables:
    """Trait effect 0.5 per SD with per-participant slopes (SD 0.4) shared across sources."""
    return choices(seed, n, 4, strength={"human": STRENGTH, "sim": STRENGTH}, preference_sd=0.7,
                   trait={"human": 0.5, "sim": 0.0 if effect else 0.5}, trait_sd=0.4)


def _strong(seed: int, effect: bool, n: int = 15) -> Tables:
    """The trait nearly decides every choice in both sources (4 log-units per SD, 15 participants
    × 2 events): separated sources and resamples. Effect: 2 per SD in the simulator."""
    return choices(seed, n, 2, strength={"human": STRENGTH, "sim": STRENGTH},
                   trait={"human": 4.0, "sim": 2.0 if effect else 4.0})


# (case functions are module-level or partials of them: the benchmark pickles cases across processes)
@lru_cache(maxsize=None)
def _big(generator: str) -> float:
    simulate = {"slopes": _slopes, "strong": _strong}[generator]
    return large_sample_truth(lambda s, e: simulate(s, e, 2000), _value, n=4)


def _truth(generator: str, effect: bool) -> float:
    return _big(generator) if effect else 0.0


CASES = [
    Case(
        analysis="traits",
        name="trait × source interaction, sim − human (log-odds per SD)",
        simulate=_slopes,
        measure=_interaction,
        truth=partial(_truth, "slopes"),
        note=("40 participants × 4 events of 4 arms per source; a graded trait (sycophancy) with effect 0.5 per "
              "SD and per-participant slopes (SD 0.4) and arm preferences (SD 0.7) shared by a human and their "
              "copy; arm-adjusted specification; 5% gen_error events dropped. Effect: the simulator ignores the "
              "trait (attenuated truth from large samples)."),
    ),
    Case(
        analysis="traits",
        name="trait × source interaction, trait near-deterministic (separation-prone)",
        simulate=_strong,
        measure=_interaction,
        truth=partial(_truth, "strong"),
        note=("15 participants × 2 events; trait effect 4 per SD in both sources, so the highest-scored reply is "
              "nearly always chosen and fits often separate (penalised). Effect: 2 per SD in the simulator."),
    ),
]
