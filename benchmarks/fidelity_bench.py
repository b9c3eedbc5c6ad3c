"""Fidelity analyses at scale, two shapes of data, with 200 participant-bootstrap draws per CI.

- ``--shape prism`` (default): PRISM-X, 530 participants × 4 domains × 4 arms, human +
  sim_dynamic (≈ 17k conversations, 68k judgement rows).
- ``--shape arena``: arena-style pairwise votes, 100,000 events over 50 arms with planted
  Bradley–Terry strengths, each event its own participant, two arms in random positions (no
  ties: the schema's ranks are permutations; ``make_arena``). Also times, side by side, the Chatbot Arena leaderboard's approach (FastChat
  ``elo_analysis.py``: votes compressed to unique (arm A, arm B, outcome) rows with counts,
  bootstrap by multinomial re-weighting of the counts, one L-BFGS logistic fit per draw), and
  the whole ``analyze`` (every analysis, as the CLI runs it).

Prints wall and CPU time per analysis (CPU time is the fair measure on a shared machine), the
total and peak RSS. Run:
    .venv/bin/python benchmarks/fidelity_bench.py [--shape arena [--analyze-only]] [--n-boot 200] [--participants 530] [--no-topics]
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import numpy as np

from simlab.fidelity.analyses import agreement, dynamics, hierarchy, position, topics, traits
from simlab.fidelity.analyses._prep import participants_of
from simlab.fidelity.analyses.distributions import distributions
from simlab.fidelity.analyses.user_text import user_text
from simlab.fidelity.synthetic import make_arena, make_synthetic
from simlab.tables import Tables


def _timed(name: str, run: Callable[[], object]) -> tuple[object, float, float]:
    t, c = time.perf_counter(), time.process_time()
    res = run()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    status = getattr(res, "status", "")
    print(f"{name:22s} {dt:7.2f} s wall  {dc:7.2f} s cpu  {f'status={status}' if status else ''}", flush=True)
    return res, dt, dc


def fastchat_bt(tables: Tables, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """FastChat-style Bradley–Terry (``compute_mle_elo`` + ``get_bootstrap_result``, sample
    weights by multinomial re-weighting): (log-strengths vs the first arm, draws, arms).

    The logistic regression is on ±(arm A − arm B) with a tie counted as half a win each way,
    without intercept and practically without penalty, fitted by L-BFGS: the same model as the
    hierarchy's two-arm rank-ordered logit."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    j = tables.judgements.sort_values(["conversation_id", "position"], kind="stable")
    arm = j["arm"].to_numpy().reshape(-1, 2)
    rank = j["rank"].to_numpy().reshape(-1, 2)
    arms = sorted(set(arm.ravel()))
    idx = {a: i for i, a in enumerate(arms)}
    a, b = np.vectorize(idx.get)(arm[:, 0]), np.vectorize(idx.get)(arm[:, 1])
    outcome = np.where(rank[:, 0] < rank[:, 1], 0, np.where(rank[:, 0] > rank[:, 1], 1, 2))  # A wins, B wins, tie
    rows, counts = np.unique(np.column_stack([a, b, outcome]), axis=0, return_counts=True)
    k = len(arms)
    # each row: a win for A (y=1) and/or for B (y=0); a tie is half of each (FastChat duplicates it)
    ra, rb, ro = rows.T
    x = np.zeros((2 * len(rows), k))
    x[np.arange(len(rows)), ra] = 1
    x[np.arange(len(rows)), rb] = -1
    x[len(rows):] = x[: len(rows)]
    y = np.r_[np.ones(len(rows)), np.zeros(len(rows))]
    share = np.r_[np.where(ro == 0, 1.0, np.where(ro == 2, 0.5, 0.0)), np.where(ro == 1, 1.0, np.where(ro == 2, 0.5, 0.0))]
    x = x[:, 1:]  # first arm = 0 (the reference)

    def fit(w: np.ndarray, start: np.ndarray) -> np.ndarray:
        wy = w * share
        keep = wy > 0
        xx, yy, ww = x[keep], y[keep], wy[keep]
        sgn = 2 * yy - 1

        def f(beta: np.ndarray) -> tuple[float, np.ndarray]:
            z = sgn * (xx @ beta)
            return -float(ww @ log_expit(z)), -(xx.T @ (ww * sgn * expit(-z)))

        return minimize(f, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-8}).x

    n_votes = int(counts.sum())
    beta = fit(np.r_[counts, counts].astype(float), np.zeros(k - 1))
    rng = np.random.default_rng(seed)
    draws = np.empty((n_boot, k - 1))
    for i in range(n_boot):
        c = rng.multinomial(n_votes, counts / n_votes).astype(float)
        draws[i] = fit(np.r_[c, c], beta)
    print(f"{'':22s} ({len(rows)} unique (arm A, arm B, outcome) rows)")
    return np.r_[0.0, beta], np.column_stack([np.zeros(n_boot), draws]), arms


def prism(args: argparse.Namespace) -> None:
    tables = make_synthetic(
        args.participants,
        strengths={"GEN": 0.0, "PROMPT": 0.3, "DPFT": 0.7, "PPFT": 1.1},
        position_bias={"sim_dynamic": 0.8},
        turn_slope={"sim_dynamic": 2.0},
        topic_shift={"sim_dynamic": 0.5},
        preference_sd=1.0,
        seed=0,
    )
    assert tables.conversations is not None and tables.turns is not None
    print(f"data: {len(tables.conversations)} conversations, {len(tables.judgements)} judgement rows, "
          f"{len(tables.turns)} turn rows")
    participants = participants_of(tables, args.n_boot, 0)
    runs: dict[str, Callable[[], object]] = {
        "hierarchy": lambda: hierarchy(tables, participants=participants),
        "agreement": lambda: agreement(tables, participants=participants),
        "position": lambda: position(tables, participants=participants),
        "dynamics": lambda: dynamics(tables, participants=participants),
        "traits": lambda: traits(tables, participants=participants),
        "distributions": lambda: distributions(tables, participants=participants),
    }
    if not args.no_topics:
        runs["topics (tfidf)"] = lambda: topics(tables, participants=participants)
    runs["user_text"] = lambda: user_text(tables, participants=participants)
    total = cpu = 0.0
    for name, run in runs.items():
        _, dt, dc = _timed(name, run)
        total += dt
        cpu += dc
    print(f"{'total':22s} {total:7.2f} s wall  {cpu:7.2f} s cpu  (n_boot={args.n_boot})")


def arena(args: argparse.Namespace) -> None:
    from simlab.fidelity import analyze

    t0 = time.perf_counter()
    tables, truth = make_arena(args.events, args.arms, position_bias=0.2, seed=0)
    print(f"data: {args.events} pairwise events over {args.arms} arms, each its own participant "
          f"({time.perf_counter() - t0:.1f} s to generate)")
    if args.analyze_only:  # the peak of analyze as a user runs it: nothing else of this script alive beside it
        _timed("analyze (everything)", lambda: analyze(tables, n_boot=args.n_boot, topics="tfidf"))
        return
    (fc, fc_draws, arms), _, fc_cpu = _timed("FastChat-style BT", lambda: fastchat_bt(tables, args.n_boot))
    participants = participants_of(tables, args.n_boot, 0)
    res, _, h_cpu = _timed("hierarchy", lambda: hierarchy(tables, participants=participants))
    print(f"{'':22s} hierarchy / FastChat-style CPU time: {h_cpu / fc_cpu:.2f}×")
    h = res.per_source["human"]  # type: ignore[attr-defined]
    ours = np.array([h.strengths[a].value for a in arms])
    top = [arms[i] for i in np.argsort(-ours)[:6]]
    print(f"{'':22s} max |simlab − FastChat-style| strength: {np.max(np.abs(ours - fc)):.2e}; "
          f"top-6 same: {top == [arms[i] for i in np.argsort(-fc)[:6]]}; "
          f"top-6 planted: {top == sorted(truth, key=lambda a: -truth[a])[:6]}")
    width_ours = np.median([h.strengths[a].ci_high - h.strengths[a].ci_low for a in arms[1:]])
    q = np.quantile(fc_draws[:, 1:], [0.025, 0.975], axis=0)
    print(f"{'':22s} median 95% CI width: simlab {width_ours:.3f}, FastChat-style {np.median(q[1] - q[0]):.3f}")
    _timed("position", lambda: position(tables, participants=participants))
    _timed("analyze (everything)", lambda: analyze(tables, n_boot=args.n_boot, topics="tfidf"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["prism", "arena"], default="prism")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--participants", type=int, default=530, help="prism shape: participants")
    ap.add_argument("--events", type=int, default=100_000, help="arena shape: pairwise events")
    ap.add_argument("--arms", type=int, default=50, help="arena shape: arms")
    ap.add_argument("--analyze-only", action="store_true",
                    help="arena shape: only the whole analyze, so the peak RSS is its own (data + analyze)")
    ap.add_argument("--no-topics", action="store_true", help="prism shape: leave out the TF-IDF topic analysis")
    args = ap.parse_args()
    prism(args) if args.shape == "prism" else arena(args)
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
