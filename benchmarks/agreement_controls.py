"""Speed of the agreement analysis's controls: the variance split (closed-form REML plus at most
100 participant-bootstrap refits) and the persona placebo, on synthetic data with planted truths.

Prints, per size, wall and CPU time of the whole ``agreement`` analysis and the estimates. Run:
    .venv/bin/python benchmarks/agreement_controls.py [--participants 50 300] [--repeats 2] [--n-boot 200]
"""

from __future__ import annotations

import argparse
import time

from simlab.fidelity.analyses import agreement
from simlab.fidelity.synthetic import make_placebo, make_rating_repeats

SIM = "sim_dynamic"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, nargs="+", default=[50, 300])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()
    for n in args.participants:
        for name, tables in (("variance split", make_rating_repeats(n, args.repeats, seed=1)),
                             ("persona placebo", make_placebo(n, q=0.4, repeats=args.repeats, seed=1))):
            t, c = time.perf_counter(), time.process_time()
            r = agreement(tables, n_boot=args.n_boot, seed=0)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if name == "variance split":
                vs = r.variance_split[SIM]
                what = ", ".join(f"{k} {e.value:.1f} [{e.ci_low:.1f}, {e.ci_high:.1f}]" for k, e in vs.variance.items())
                what += f" (planted 100, 25, 64; {vs.n_boot} refits, {vs.n_failed} failed)"
            else:
                gap = r.persona_placebo[SIM].by_instrument["ranked_best"].gap
                assert gap is not None
                what = f"ranked_best gap {gap.value:.3f} [{gap.ci_low:.3f}, {gap.ci_high:.3f}] (planted 0.300)"
            print(f"{n:5d} participants  {name:16s} {dt:6.2f} s wall {dc:6.2f} s cpu  {what}", flush=True)


if __name__ == "__main__":
    main()
