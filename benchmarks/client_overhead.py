"""Client-layer overhead: simlab's LLMClient vs a bare openai.AsyncOpenAI loop.

Both hit the same scripted stub server (its own process, 127.0.0.1) at concurrency 64.
Reports calls/s for each, their ratio (target ≥ 0.9), and this process's CPU time per call.

    python benchmarks/client_overhead.py [--calls 2000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

from simlab.config import ModelSpec, OpenAIEndpoint, SamplingConfig
from simlab.llm import LLMClient

MSGS = [{"role": "user", "content": "Say something short."}]


async def bare(url: str, n: int, conc: int) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    gate = asyncio.Semaphore(conc)

    async def one() -> None:
        async with gate:
            await client.chat.completions.create(model="m", messages=MSGS, max_tokens=16, temperature=0.7)

    await asyncio.gather(*(one() for _ in range(n)))
    await client.close()


async def simlab_client(url: str, n: int, conc: int) -> None:
    client = LLMClient({"stub": OpenAIEndpoint(base_url=url, max_in_flight=conc)})
    spec = ModelSpec(endpoint="stub", model="m", sampling=SamplingConfig(max_tokens=16))
    await asyncio.gather(*(client.chat(spec, MSGS) for _ in range(n)))


def measure(fn, url: str, n: int, conc: int) -> tuple[float, float]:
    asyncio.run(fn(url, min(100, n), conc))  # warm-up: imports, connection pools
    w0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(fn(url, n, conc))
    return n / (time.perf_counter() - w0), (time.process_time() - c0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="alternate the two clients this many times")
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "simlab.testing"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        rows = {"bare openai.AsyncOpenAI": [], "simlab LLMClient (litellm)": []}
        for _ in range(args.rounds):
            rows["bare openai.AsyncOpenAI"].append(measure(bare, url, args.calls, args.concurrency))
            rows["simlab LLMClient (litellm)"].append(measure(simlab_client, url, args.calls, args.concurrency))
    finally:
        server.terminate()
        server.wait(10)
    best = {k: max(v) for k, v in rows.items()}  # best round of each: least disturbed by the machine
    print(f"{args.calls} calls per round, concurrency {args.concurrency}, best of {args.rounds} rounds")
    for name, (rate, cpu) in best.items():
        print(f"  {name:<28} {rate:8.1f} calls/s   {cpu * 1e3:6.2f} ms CPU per call (client process)")
    ratio = best["simlab LLMClient (litellm)"][0] / best["bare openai.AsyncOpenAI"][0]
    print(f"  ratio simlab/bare: {ratio:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
