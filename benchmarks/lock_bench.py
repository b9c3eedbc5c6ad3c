"""What the run lock costs: taking and dropping it, opening a store with it, how fast a second
writer is refused, and how late a waiting writer gets a run its holder let go of.

    python benchmarks/lock_bench.py [--reps 200]

Prints one JSON object (milliseconds). Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simlab.store import RunStore  # noqa: E402
from simlab.store.connection import connect  # noqa: E402
from simlab.store.lock import RunLock, RunLocked  # noqa: E402

HOLD = """
import sys, time
from pathlib import Path
from simlab.store.lock import RunLock
lock = RunLock(Path(sys.argv[1]) / "store.sqlite").acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
released = time.time()
lock.release()
print(released, flush=True)
"""

META = {"config": {"arms": []}, "seed": 1}


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="repetitions of each in-process measurement")
    args = parser.parse_args(argv)
    run = Path(tempfile.mkdtemp(prefix="simlab-lock-")) / "run"
    RunStore.create(run, META).close()
    store_file = run / "store.sqlite"

    lock_s = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        RunLock(store_file).acquire().release()
        lock_s.append(time.perf_counter() - t0)
    open_s, bare_s = [], []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        RunStore.open(run).close()
        open_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        connect(store_file).close()
        bare_s.append(time.perf_counter() - t0)

    env = {"PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run), "2"], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    t0 = time.perf_counter()
    try:
        RunStore.open(run)
    except RunLocked:
        refused_s = time.perf_counter() - t0
    else:
        raise SystemExit("the second writer was not refused")
    with RunStore.open(run, wait_lock=30):
        got = time.time()
    released = float(holder.stdout.readline())
    holder.wait(10)
    print(json.dumps({
        "reps": args.reps,
        "acquire_release_ms": _ms(lock_s),
        "store_open_close_ms": _ms(open_s),
        "bare_connect_close_ms": _ms(bare_s),
        "refused_after_ms": round(refused_s * 1000, 1),
        "waiter_late_ms": round((got - released) * 1000, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
