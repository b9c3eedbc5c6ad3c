"""Fidelity analyses at PRISM-X scale: 530 participants × 4 domains × 4 arms, human + sim_dynamic
(≈ 17k conversations, 68k judgement rows), 200 participant-bootstrap draws per CI.

Prints wall time per analysis, the total and peak RSS. Run:
    .venv/bin/python benchmarks/fidelity_bench.py [--n-boot 200] [--participants 530] [--no-topics]
"""

from __future__ import annotations

import argparse
import resource
import time

from simlab.fidelity.analyses import agreement, dynamics, hierarchy, position, topics, traits
from simlab.fidelity.analyses._prep import participants_of
from simlab.fidelity.synthetic import make_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--participants", type=int, default=530)
    ap.add_argument("--no-topics", action="store_true", help="leave out the TF-IDF topic analysis")
    args = ap.parse_args()
    t0 = time.perf_counter()
    tables = make_synthetic(
        args.participants,
        strengths={"GEN": 0.0, "PROMPT": 0.3, "DPFT": 0.7, "PPFT": 1.1},
        position_bias={"sim_dynamic": 0.8},
        turn_slope={"sim_dynamic": 2.0},
        topic_shift={"sim_dynamic": 0.5},
        preference_sd=1.0,
        seed=0,
    )
    print(f"data: {len(tables.conversations)} conversations, {len(tables.judgements)} judgement rows, "
          f"{len(tables.turns)} turn rows ({time.perf_counter() - t0:.1f} s to generate)")
    participants = participants_of(tables, args.n_boot, 0)
    runs = {
        "hierarchy": lambda: hierarchy(tables, participants=participants),
        "agreement": lambda: agreement(tables, participants=participants),
        "position": lambda: position(tables, participants=participants),
        "dynamics": lambda: dynamics(tables, participants=participants),
        "traits": lambda: traits(tables, participants=participants),
    }
    if not args.no_topics:
        runs["topics (tfidf)"] = lambda: topics(tables, participants=participants)
    total = cpu = 0.0
    for name, run in runs.items():
        t, c = time.perf_counter(), time.process_time()
        res = run()
        dt, dc = time.perf_counter() - t, time.process_time() - c
        total += dt
        cpu += dc
        # CPU time too: wall time on a shared 2-core machine depends on other processes' load
        print(f"{name:16s} {dt:7.2f} s wall  {dc:7.2f} s cpu  status={res.status}")
    print(f"{'total':16s} {total:7.2f} s wall  {cpu:7.2f} s cpu  (n_boot={args.n_boot})")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
