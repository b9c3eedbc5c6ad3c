"""The embedded default on this machine: speed per mode and thread count (idle and with one core
busy), the quickstart's wall time, the judge pass on it, and the servers' peak memory.

    python benchmarks/embedded_backend.py                 # everything (~6 min on 2 cores)
    python benchmarks/embedded_backend.py --only speed    # tok/s table only

Prints one JSON object. Peak RSS is sampled every 0.2 s over every llama.cpp server process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from simlab.local import LocalServer  # noqa: E402
from simlab.local.llama_server import CRASH_ENV  # noqa: E402
from simlab.local.server import LocalBackendError  # noqa: E402

PROMPT = ("Write a short, friendly paragraph for a newcomer about how to plan a week of simple, healthy "
          "dinners on a budget, with two concrete examples.")


def _spin(stop: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    while not stop.is_set():  # type: ignore[attr-defined]
        pass


def _tok_s(server: LocalServer, n: int = 3) -> float:
    """Completion tokens per second over ``n`` 128-token generations (prompt cache off the path)."""
    tokens, seconds = 0, 0.0
    for i in range(n):
        body = {"model": server.alias, "messages": [{"role": "user", "content": f"{PROMPT} ({i})"}],
                "max_tokens": 128, "temperature": 0.0, "seed": i}
        reply, dt = server._post(body, timeout=300)
        tokens += int(reply["usage"]["completion_tokens"])
        seconds += dt
    return round(tokens / seconds, 1)


def speed() -> list[dict]:
    rows = []
    for mode in ("fast", "safe"):
        for threads in (1, 2):
            for busy in (False, True):
                row = {"mode": mode, "n_threads": threads, "one_core_busy": busy}
                stop = multiprocessing.Event()
                spinner = multiprocessing.Process(target=_spin, args=(stop,), daemon=True) if busy else None
                try:
                    with LocalServer(n_ctx=2048, n_threads=threads, mode=mode, prompt_cache=False) as server:  # type: ignore[arg-type]
                        if spinner:
                            spinner.start()
                        row["tok_s"] = _tok_s(server)
                except LocalBackendError as exc:
                    row["tok_s"] = None
                    row["error"] = str(exc).splitlines()[0][:200]
                finally:
                    stop.set()
                    if spinner and spinner.is_alive():
                        spinner.join(5)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


class PeakRSS:
    """Peak resident memory of every llama.cpp server process (summed, and the largest one)."""

    def __init__(self) -> None:
        self.total = 0
        self.single = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = []
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"simlab.local.llama_server" not in cmd:
                        continue
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            sizes.append(int(line.split()[1]) * 1024)
                except OSError:
                    continue
            if sizes:
                self.total = max(self.total, sum(sizes))
                self.single = max(self.single, max(sizes))
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mib(self) -> dict:
        return {"peak_rss_all_servers_mib": round(self.total / 2**20), "peak_rss_one_server_mib": round(self.single / 2**20)}


def quickstart_and_judge(out: Path) -> dict:
    from simlab.autograde import grade_run
    from simlab.autograder import AutogradeOptions
    from simlab.config import default_config, parse_config
    from simlab.run import run_experiment

    data = default_config().public_dict()
    data["out_dir"] = str(out)
    config = parse_config(data)
    result: dict = {}
    with PeakRSS() as rss:
        t0 = time.monotonic()
        summary = asyncio.run(run_experiment(config, progress=False, report=False))
        result["quickstart_wall_s"] = round(time.monotonic() - t0, 1)
    result.update({f"quickstart_{k}": v for k, v in rss.mib().items()})
    result["quickstart_sessions"] = f"{summary.sessions_completed} completed, {summary.sessions_failed} failed"
    result["quickstart_backends"] = summary.backends
    with PeakRSS() as rss:
        t0 = time.monotonic()
        report = asyncio.run(grade_run(summary.run_dir, options=AutogradeOptions(sample=1)))
        result["judge_sample1_wall_s"] = round(time.monotonic() - t0, 1)
    result.update({f"judge_{k}": v for k, v in rss.mib().items()})
    result["judge_grades"] = f"{report.run.graded} graded, {report.run.failed} failed"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("speed", "quickstart"), help="run one part")
    args = parser.parse_args()
    os.environ.pop(CRASH_ENV, None)
    result: dict = {"cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name")), "?"), "cores": os.cpu_count()}
    if args.only in (None, "speed"):
        result["speed"] = speed()
    if args.only in (None, "quickstart"):
        with tempfile.TemporaryDirectory() as tmp:
            result.update(quickstart_and_judge(Path(tmp)))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
