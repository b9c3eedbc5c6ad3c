"""Report at PRISM-X scale: 530 participants × 4 domains × 4 arms, human + sim_dynamic.

Prints analysis time, render time and file size. Target: render < 10 s, file < 10 MB.

    .venv/bin/python benchmarks/report_bench.py [--n-boot 50] [--participants 530]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from simlab.fidelity import compare
from simlab.fidelity.synthetic import make_synthetic
from simlab.report import write_html


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=530)
    parser.add_argument("--n-boot", type=int, default=50, help="bootstrap draws for the analyses (render cost does not depend on it)")
    parser.add_argument("--out", help="keep the report here (default: a temp dir)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    tables = make_synthetic(args.participants, strengths={"GEN": 0.0, "PROMPT": 0.3, "DPFT": 0.6, "PPFT": 0.9},
                            position_bias={"sim_dynamic": 0.8}, turn_slope={"sim_dynamic": 1.0},
                            preference_sd=1.0, seed=0)
    t1 = time.perf_counter()
    result = compare(tables, n_boot=args.n_boot)
    t2 = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "report.html"
    write_html(result, out, tables=tables)
    t3 = time.perf_counter()
    size = out.stat().st_size
    print(f"rows: {len(tables.judgements):,} judgements, {len(tables.turns):,} turns")
    print(f"synthetic data: {t1 - t0:.1f} s; analyses (n_boot={args.n_boot}): {t2 - t1:.1f} s")
    print(f"render: {t3 - t2:.2f} s (target < 10 s); size: {size / 1e6:.2f} MB (target < 10 MB); {out}")


if __name__ == "__main__":
    main()
