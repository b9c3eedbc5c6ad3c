"""The response cache's cost and worth on a stub study (docs/benchmarks.md, "Response cache").

Three runs of the same study (generated participants, 4 domains, the four arms and simulator of
``benchmarks/scale.py``'s config) against one stub fleet process with a loaded GPU fleet's latency:

1. cold, no cache: the baseline wall time;
2. cold, with a new cache file (every reply stored): its overhead over 1;
3. warm: the finished study run again into a new run directory with the cache of 2: every request
   is served from the cache (no request reaches the stub), its wall time as a share of 2's.

The last line is the JSON result (with the study's folder, which is kept). Run:
    .venv/bin/python benchmarks/cache_bench.py --sessions 1000 --concurrency 64
``--warm-again DIR`` runs only a warm rerun of the study in DIR (a folder an earlier run printed)
with its cache as it is now, and gives its wall and CPU time and the requests that reached the stub.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import DOMAINS, Stub, make_config, make_personas  # noqa: E402

from simlab.run import RunSummary, run_experiment  # noqa: E402


def _run(config: Any, url: str) -> tuple[RunSummary, float]:
    t0 = time.perf_counter()
    summary = asyncio.run(run_experiment(config, base_urls={"fleet": url}, progress=False, report=False))
    return summary, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.5, help="stub seconds per reply")
    ap.add_argument("--per-token", type=float, default=0.002, help="stub seconds per completion token")
    ap.add_argument("--jitter", type=float, default=0.2)
    ap.add_argument("--warm-again", type=Path, metavar="DIR", help="only a warm rerun of the study in DIR")
    args = ap.parse_args()
    if args.warm_again is not None:
        warm_again(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="simlab-cache-bench-"))
    make_personas(math.ceil(args.sessions / len(DOMAINS)), tmp / "personas.jsonl")
    stub = Stub(args)
    try:
        def config(name: str, cache: Path | None) -> Any:
            cfg = make_config(tmp / "personas.jsonl", tmp / name, args.concurrency, 4 * args.concurrency,
                              timeout_s=120)
            return cfg.model_copy(update={"cache": None if cache is None else str(cache)})

        plain, t_plain = _run(config("plain", None), stub.url)
        cold, t_cold = _run(config("cold", tmp / "replies.sqlite"), stub.url)
        before = stub.stats().get("requests")
        warm, t_warm = _run(config("warm", tmp / "replies.sqlite"), stub.url)
        after = stub.stats().get("requests")
    finally:
        stub.close()
    out = {
        "sessions": plain.sessions_completed, "concurrency": args.concurrency, "latency_s": args.latency,
        "wall_s": {"cold_no_cache": round(t_plain, 2), "cold_with_cache": round(t_cold, 2), "warm": round(t_warm, 2)},
        "cold_overhead": round(t_cold / t_plain - 1, 4),
        "warm_share_of_cold": round(t_warm / t_cold, 4),
        "warm_hits": warm.cache_hits, "warm_lookups": warm.cache_lookups,
        "requests_reaching_the_stub_when_warm": None if before is None or after is None else after - before,
        "cache_file_mb": round((tmp / "replies.sqlite").stat().st_size / 1e6, 1), "dir": str(tmp),
    }
    print(f"cold without cache {t_plain:.1f} s, cold with cache {t_cold:.1f} s "
          f"({100 * out['cold_overhead']:+.1f}%), warm {t_warm:.1f} s ({100 * out['warm_share_of_cold']:.1f}% of cold); "
          f"warm hits {warm.cache_hits}/{warm.cache_lookups}", file=sys.stderr)
    print(json.dumps(out))


def warm_again(args: argparse.Namespace) -> None:
    """A warm rerun of the study in ``args.warm_again`` into a new run folder there, with its cache."""
    tmp: Path = args.warm_again
    n = len(list(tmp.glob("warm-again*")))
    cfg = make_config(tmp / "personas.jsonl", tmp / f"warm-again{n}", args.concurrency, 4 * args.concurrency,
                      timeout_s=120).model_copy(update={"cache": str(tmp / "replies.sqlite")})
    stub = Stub(args)
    try:
        before = stub.stats().get("requests")
        cpu0 = time.process_time()
        warm, t_warm = _run(cfg, stub.url)
        cpu = time.process_time() - cpu0
        after = stub.stats().get("requests")
    finally:
        stub.close()
    print(json.dumps({"sessions": warm.sessions_completed, "warm_wall_s": round(t_warm, 2), "warm_cpu_s": round(cpu, 2),
                      "warm_hits": warm.cache_hits, "warm_lookups": warm.cache_lookups,
                      "requests_reaching_the_stub": None if before is None or after is None else after - before}))


if __name__ == "__main__":
    main()
