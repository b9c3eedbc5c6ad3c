"""Calibration table of every simulated-vs-human comparison.

For each calibration case of the registered analyses (``simlab.fidelity.registry.ANALYSES``, the
built-ins and any a package's entry point adds): ``--reps`` datasets with a
planted null (same truth in both sources) and ``--reps`` with a planted effect. Reports the
false-positive rate at nominal 5% (target ≤ 7%), the power, and the 95% CI coverage of the
truth (target 92–98%), each with its Wilson interval, and writes them to ``docs/calibration.md``.
The leaderboard (``simlab.fidelity.fidelity_index``: its index, the index's CI and the paired test between
two variants) is not an analysis but has cases too (``--analysis leaderboard``), and one more figure: how
often a variant planted closer to the humans ranks first.

    .venv/bin/python benchmarks/calibration.py                      # every case, 200 reps each
    .venv/bin/python benchmarks/calibration.py --reps 50 --analysis dynamics --out /tmp/c.md
    .venv/bin/python benchmarks/calibration.py --reps 200 --analysis leaderboard --out /tmp/l.md
    .venv/bin/python benchmarks/calibration.py --reps 20 --analysis dynamics --case held-out --out /tmp/h.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from simlab.fidelity.calibration import Calibration, Case, all_cases, binomial_ci, calibrated, run_case
from simlab.fidelity.calibration import leaderboard as board
from simlab.registry import RegistrationError

FPR_TARGET = 0.07
COVERAGE_TARGET = (0.92, 0.98)


LEADERBOARD = "leaderboard"


def _cases(analyses: list[str]) -> list[Case]:
    """The registered analyses' cases, then the leaderboard's when it is asked for."""
    cases = all_cases([a for a in analyses if a != LEADERBOARD])
    return cases + (list(board.CASES) if LEADERBOARD in analyses else [])


def _run(args: tuple[str, str, int]) -> Calibration:
    analysis, name, reps = args
    case = next(c for c in _cases([analysis]) if c.name == name)
    return run_case(case, reps)


def _rank_first(reps: int) -> tuple[int, int]:
    return board.rank_first(reps)


def rank_first_section(first: int, reps: int) -> list[str]:
    """The leaderboard's "closer variant ranks first" figure, with its Wilson interval."""
    return ["", "## Leaderboard: the variant planted closer ranks first", "",
            f"In {first} of {reps} planted datasets{_interval(first, reps)} the variant copying its humans in "
            f"{board.Q_CLOSER:.0%} of conversations ranked above the one copying {board.Q_NULL:.0%} "
            f"({100 * first / reps:.1f}%), at {board.N_PARTICIPANTS} participants × {len(board.DOMAINS)} domains "
            f"(the generator of the leaderboard rows above, under the effect)."]


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def _interval(k: int, n: int) -> str:
    lo, hi = binomial_ci(k, n)
    return "" if n == 0 else f" ({100 * lo:.0f}–{100 * hi:.0f})"


def table(results: list[Calibration], command: str, seconds: float, extra: list[str] | None = None) -> str:
    lines = [
        "# Calibration of the simulated-vs-human comparisons",
        "",
        "Each comparison is run on datasets with a **planted null** (both sources share one truth, with",
        "per-participant heterogeneity) and with a **planted effect** (a known difference). A calibrated",
        "comparison is significant at nominal 5% in about 5% of the nulls (target ≤ 7%) and its 95% CI",
        "covers the truth in 92–98% of all datasets. Brackets: Wilson 95% intervals of each rate.",
        "",
        f"Made by `{command}` on {dt.date.today().isoformat()} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"{seconds / 60:.1f} min).",
        "",
        "| analysis | comparison | reps | false positives at 5% | power | CI coverage | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        n_null, n_eff = r.null_reported, r.effect_reported
        n_all = n_null + n_eff
        ok_fpr = r.false_positive_rate <= FPR_TARGET
        ok_cov = COVERAGE_TARGET[0] <= r.coverage <= COVERAGE_TARGET[1]
        verdict = "ok" if ok_fpr and ok_cov else "; ".join(
            [*([] if ok_fpr else ["too many false positives"]), *([] if ok_cov else ["coverage off target"])])
        if n_null < r.reps or n_eff < r.reps:
            verdict += f"; {2 * r.reps - n_all} of {2 * r.reps} datasets not reported"
        lines.append(
            f"| {r.case.analysis} | {r.case.name} | {r.reps} | {_pct(r.false_positive_rate)}"
            f"{_interval(r.null_significant, n_null)} | {_pct(r.power)}{_interval(r.effect_significant, n_eff)} | "
            f"{_pct(r.coverage)}{_interval(r.covered, r.coverage_n)}{' ¹' if r.case.boundary_null else ''} | "
            f"{verdict} |")
    if any(r.case.boundary_null for r in results):
        lines += ["", "¹ The null truth is on the boundary (a variance of 0): there a CI covers it exactly when it does "
                  "not exclude it (coverage = 1 − false positives), so the coverage is of the planted effects only."]
    notes = [f"- **{r.case.analysis} / {r.case.name}**: {r.case.note}" for r in results if r.case.note]
    problems = [f"- {r.case.analysis} / {r.case.name}: " + "; ".join(r.problems) for r in results if r.problems]
    if notes:
        lines += ["", "## What each generator plants", "", *notes]
    if problems:
        lines += ["", "## Datasets the analysis did not report (first few)", "", *problems]
    lines += extra or []
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=200, help="datasets per null and per effect (default 200)")
    ap.add_argument("--analysis", action="append", metavar="NAME",
                    help="only these analyses (repeatable; default: every registered analysis with cases)")
    ap.add_argument("--case", action="append", metavar="TEXT",
                    help="only the cases whose comparison contains TEXT (repeatable), e.g. 'held-out'")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "calibration.md")
    args = ap.parse_args(argv)
    try:
        known = [*calibrated(), LEADERBOARD]  # registration problems (and entry points) surface here, before any work
        unknown = [a for a in args.analysis or () if a not in known]
        if unknown:
            raise RegistrationError(f"no calibration cases for {', '.join(unknown)} (analyses with cases: "
                                    f"{', '.join(known)})")
    except RegistrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wanted = args.analysis or known
    cases = [c for c in _cases(wanted) if not args.case or any(t in c.name for t in args.case)]
    if not cases:
        print("no calibration cases registered" + (f" whose comparison contains {args.case}" if args.case else ""),
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    jobs = [(c.analysis, c.name, args.reps) for c in cases]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = []
        for r in pool.map(_run, jobs):
            print(f"{r.case.analysis:10s} {r.case.name:50s} FPR {_pct(r.false_positive_rate):>6s}  power "
                  f"{_pct(r.power):>6s}  coverage {_pct(r.coverage):>6s}  ({r.seconds:.0f} s)", flush=True)
            results.append(r)
        ranked = pool.submit(_rank_first, args.reps).result() if LEADERBOARD in wanted else None
    extra = rank_first_section(*ranked) if ranked else []
    if ranked:
        print(f"leaderboard: closer variant first in {ranked[0]}/{ranked[1]}", flush=True)
    command = shlex.join(["python", "benchmarks/calibration.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.write_text(table(results, command, time.perf_counter() - t0, extra))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
