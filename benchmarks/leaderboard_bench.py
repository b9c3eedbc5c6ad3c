"""The leaderboard at scale: 10 simulated variants × 2,000 participants (PRISM-X shaped: 4 domains × 4
arms) and the humans, with 200 participant-bootstrap draws.

Humans from ``make_synthetic`` (as the leaderboard's calibration generator makes them); each variant
copies its matched human's judgements in a share of conversations (0.05 to 0.95) and answers at random
otherwise (``simlab.fidelity.calibration.leaderboard.plant``). Times ``leaderboard(details=False)`` (the
index path: components, index, humans row, pairwise tests) and then ``details=True`` (every fidelity
analysis as well), wall and CPU, and the peak RSS after each (the peak is cumulative: the second figure
includes the first). Target for the index path: < 60 s and < 1 GiB on 2 cores. ``--cli DIR`` also
writes the data to DIR in the on-disk format (the humans, and each variant as a ``--sim`` folder) and
times the whole command a user runs, ``simlab compare --human … --sim NAME=PATH … --out … --report …``
(loading, the leaderboard, JSON and HTML), in a process of its own: wall time and its peak RSS. Run:

    .venv/bin/python benchmarks/leaderboard_bench.py [--variants 10] [--participants 2000] [--n-boot 200]
        [--no-details] [--topics none] [--cli DIR]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from simlab.fidelity.calibration.leaderboard import humans, plant
from simlab.fidelity.fidelity_index import leaderboard
from simlab.tables import Tables


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=int, default=10, help="simulated sources (default 10)")
    ap.add_argument("--participants", type=int, default=2000, help="participants per source (default 2000)")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap draws (default 200)")
    ap.add_argument("--no-details", action="store_true", help="time the index path only")
    ap.add_argument("--topics", choices=("tfidf", "none"), default="tfidf", help="the details' topic embedding")
    ap.add_argument("--cli", type=Path, metavar="DIR", help="also time `simlab compare` on the data written to DIR")
    args = ap.parse_args(argv)

    t, c = time.perf_counter(), time.process_time()
    qs = np.linspace(0.05, 0.95, args.variants)
    tables = plant(humans(args.participants, seed=0), {f"sim_dynamic:v{i:02d}": ("copy", float(q)) for i, q in enumerate(qs)},
                   seed=0)
    print(f"data: {args.variants} variants × {args.participants} participants + humans, {len(tables.judgements):,} "
          f"judgement rows, made in {time.perf_counter() - t:.1f} s wall ({_peak_mib():.0f} MiB peak)", flush=True)

    t, c = time.perf_counter(), time.process_time()
    lb = leaderboard(tables, n_boot=args.n_boot, seed=0, details=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"leaderboard(details=False): {wall:.1f} s wall, {cpu:.1f} s cpu, peak RSS {_peak_mib():.0f} MiB", flush=True)
    for row in lb.leaderboard:
        print(f"  {row.source:20s} {row.index.value:6.1f} [{row.index.ci_low:5.1f}, {row.index.ci_high:5.1f}]")
    print(f"  {len(lb.pairwise)} paired tests", flush=True)

    if not args.no_details:
        t, c = time.perf_counter(), time.process_time()
        lb = leaderboard(tables, n_boot=args.n_boot, seed=0, details=True, topics=None if args.topics == "none" else "tfidf")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        n_comp = sum(len(r.comparisons) for r in lb.leaderboard)
        print(f"leaderboard(details=True): {wall:.1f} s wall, {cpu:.1f} s cpu, peak RSS {_peak_mib():.0f} MiB "
              f"({n_comp} comparisons)", flush=True)
    if args.cli is not None:
        _time_cli(tables, args)
    return 0


def _time_cli(tables: Tables, args: argparse.Namespace) -> None:
    """``simlab compare`` as a user runs it, on the data written to ``args.cli``, in a child process."""
    from simlab.fidelity import write_tables

    out: Path = args.cli
    sims = []
    for source in tables.sources:
        part = tables.for_source(source)
        folder = write_tables(part, out / source.replace(":", "_"))
        if source != "human":
            sims += ["--sim", f"{source.replace(':', '_')}={folder}"]
    for mode in [["--no-details"]] + ([] if args.no_details else [[]]):
        # the command's own main, in a child that reports its peak RSS: VmHWM of its own memory (ru_maxrss keeps
        # the parent's size at fork across exec on Linux, and RUSAGE_CHILDREN the largest of all children)
        cmd = [sys.executable, "-c", _CHILD, "--human", str(out / "human"), *sims, "--n-boot", str(args.n_boot),
               "--out", str(out / "leaderboard.json"), "--report", str(out / "leaderboard.html"), *mode]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode != 0:
            raise SystemExit(f"simlab compare failed ({done.returncode}): {done.stderr[-2000:]}")
        peak = float(done.stderr.rsplit("PEAK_KIB", 1)[1].split()[0]) / 1024
        print(f"simlab compare {' '.join(mode) or '(with details)'}: {wall:.1f} s wall, peak RSS {peak:.0f} MiB",
              flush=True)


_CHILD = """
import re, resource, sys
from pathlib import Path
from simlab.compare import main
rc = main(sys.argv[1:])
status = Path("/proc/self/status")
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", status.read_text()) if status.exists() else None
print("PEAK_KIB", hwm.group(1) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


if __name__ == "__main__":
    sys.exit(main())
