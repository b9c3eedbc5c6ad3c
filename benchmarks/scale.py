"""PRISM-X scale on one machine: N sessions, C in flight, against a stub GPU fleet.

The stub (``python -m simlab.testing``, its own process on 127.0.0.1) answers like a loaded
fleet: ``--latency`` s per reply + ``--per-token`` s per completion token, ±``--jitter``.
Participants are generated (copies of the sample personas with new ids), 4 domains each, the
four arms and simulator of ``configs/vllm.toml`` (persona summaries included) on one endpoint.

Measured in one run, in this order:
1. Little's-law bound: ``--baseline`` sessions at low load give the mean session latency L;
   C sessions in flight can finish at most C / L per second.
2. Client bound: a bare ``openai.AsyncOpenAI`` loop replays the low-load run's requests (their
   messages, schemas and sampling), ``--client-calls`` of them (default 20,000; the whole run's
   count would double the benchmark's time), as many in flight as the run may have (the
   endpoint's bound, 4C by default: a bound of C made the faster clients wait on the stub's
   latency rather than on their CPU), against the same stub, with the garbage collector tuned as
   in the run, timed over its steady state (the middle 80% of the calls to finish). The faster
   of ``create()`` and ``post()`` (the SDK's leanest call) on its aiohttp transport counts; its
   calls/s ÷ the run's calls per session is what this machine allows a Python client on the
   openai SDK. (simlab's own route, a JSON POST on aiohttp, costs about a third of ``post()``.)
3. The run: ``run_experiment`` on N sessions at concurrency C, while a monitor samples the
   event loop's lag and this process's RSS every 0.1 s.
4. Resume: the same run again (nothing to do) — the time a user waits to be told it is done.

``--faults`` adds a second run of the same sessions whose stub answers 20% HTTP 500, 10% 429
with Retry-After, 5% never (the client's timeout ends them, ``--fault-timeout``, 10 s) and 5% malformed JSON, and
reports how every session was accounted for and its wall time as a ratio of the fault-free run.

The last line is the JSON result. Run:
    .venv/bin/python benchmarks/scale.py --sessions 1000 --concurrency 1000
    .venv/bin/python benchmarks/scale.py --sessions 10000 --concurrency 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simlab.config import Config, parse_config
from simlab.run import RunSummary, run_experiment
from simlab.runner import gc_for_many_sessions
from simlab.testing.lag import LagSampler

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["unguided", "values", "controversy", "emotional_wellbeing"]
FAULTS = ["5xx=0.2", "429=0.1", "timeout=0.05", "malformed=0.05"]


def make_personas(n: int, path: Path) -> None:
    """``n`` participants: the sample personas cycled, each with its own id."""
    sample = [json.loads(line) for line in (ROOT / "personas/sample.jsonl").read_text().splitlines() if line.strip()]
    with path.open("w") as f:
        for i in range(n):
            record = dict(sample[i % len(sample)])
            record["persona_id"] = f"p{i:06d}"
            f.write(json.dumps(record) + "\n")


def make_config(personas: Path, out: Path, concurrency: int, in_flight: int, *, timeout_s: float) -> Config:
    arms = [("GEN", "base", "arms/generic.j2", "none"), ("PROMPT", "base", "arms/persona_prompt.j2", "summary"),
            ("DPFT", "dpft", "arms/generic.j2", "none"), ("PPFT", "ppft", "arms/generic.j2", "none")]
    return parse_config({
        "name": "scale", "seed": 0, "personas": str(personas), "concurrency": concurrency, "out_dir": str(out),
        "endpoints": {"fleet": {"kind": "vllm", "base_url": "http://127.0.0.1:9/v1", "max_in_flight": in_flight,
                                "timeout_s": timeout_s}},
        "protocol": {"domains": DOMAINS, "min_turns": 2, "max_turns": 6},
        "simulator": {"endpoint": "fleet", "model": "base", "rendering": "summary"},
        "judge": {"endpoint": "fleet", "model": "base"},
        "summary": {"endpoint": "fleet", "model": "base", "cache_dir": str(out / "summaries")},
        "arms": [{"id": a, "endpoint": "fleet", "model": m, "system_prompt": t, "personalisation": p,
                  "sampling": {"max_tokens": 200}} for a, m, t, p in arms],
        "max_gen_error_rate": 1.0,
    })


class Stub:
    """The stub fleet as its own process (its CPU is not this process's)."""

    def __init__(self, args: argparse.Namespace, faults: Sequence[str] = (), record: Path | None = None) -> None:
        cmd = [sys.executable, "-m", "simlab.testing", "--no-log", "--latency", str(args.latency),
               "--per-token", str(args.per_token), "--jitter", str(args.jitter)]
        if record is not None:
            cmd += ["--record", str(record)]
        for f in faults:
            cmd += ["--fault-rate", f]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()  # type: ignore[union-attr]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/stats", timeout=10) as r:
            return json.load(r)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # requests held by the timeout fault keep it busy
            self.proc.kill()
            self.proc.wait(10)


class Monitor:
    """Event-loop lag (``LagSampler``: every ``period`` s, and where the loop stalled), the peak RSS,
    the garbage collector's pauses (by generation), and the RSS when the run's store first held
    ``checkpoint`` finished sessions and at the end (a leak shows as end / checkpoint > 1). RSS
    and the store's count are read by the sampler's thread, away from the loop."""

    def __init__(self, period: float = 0.1, store_under: Path | None = None, checkpoint: int = 0) -> None:
        self.sampler = LagSampler(period=period, on_tick=self._tick)
        self.store_under, self.checkpoint = store_under, checkpoint
        self.peak_rss = 0
        self.rss_at_checkpoint: int | None = None
        self.rss_end = 0
        self._db: sqlite3.Connection | None = None

    @property
    def lags(self) -> list[float]:
        return self.sampler.lags

    @property
    def gc_pauses(self) -> dict[int, list[float]]:
        return self.sampler.gc_pauses

    @staticmethod
    def rss() -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024  # type: ignore[union-attr]

    def _finished(self) -> int:
        if self._db is None:
            found = sorted(self.store_under.rglob("store.sqlite")) if self.store_under else []
            if not found:
                return 0
            self._db = sqlite3.connect(f"{found[0].resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        q = "SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM failures)"
        try:
            return int(self._db.execute(q).fetchone()[0])
        except sqlite3.Error:  # busy, or the store's tables not made yet
            return 0

    def _tick(self) -> None:
        rss = self.rss()
        self.peak_rss = max(self.peak_rss, rss)
        if self.checkpoint and self.rss_at_checkpoint is None and self._finished() >= self.checkpoint:
            self.rss_at_checkpoint = rss

    def start(self) -> None:
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop()
        self.rss_end = self.rss()
        self.peak_rss = max(self.peak_rss, self.rss_end)
        if self._db is not None:
            self._db.close()
            self._db = None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(math.ceil(q * len(s))) - 1)]


def store_counts(run_dir: Path) -> dict[str, int]:
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        q = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "sessions": q("SELECT count(*) FROM sessions"),
            "failures": q("SELECT count(*) FROM failures"),
            "distinct": q("SELECT count(*) FROM (SELECT conversation_id FROM sessions UNION SELECT conversation_id FROM failures)"),
            "both": q("SELECT count(*) FROM sessions JOIN failures USING (conversation_id)"),
            "calls": q("SELECT count(*) FROM llm_calls"),
            "judgements": q("SELECT count(*) FROM judgements"),
        }


async def run(config: Config, url: str, *, progress: bool, monitor: Monitor | None = None) -> RunSummary:
    if monitor:
        monitor.start()
    try:
        return await run_experiment(config, base_urls={"fleet": url}, progress=progress, report=False)
    finally:
        if monitor:
            monitor.stop()


def transports() -> list[str]:
    """The bare clients to time, on the SDK's aiohttp transport (``openai[aiohttp]``): its
    ``create()``, and its own ``post()`` with the body as it is (no typed-dict transform of the
    request, no pydantic model of the reply: what simlab's client sends). ``create()`` on httpx
    when aiohttp is not installed."""
    try:
        from openai import DefaultAioHttpClient

        DefaultAioHttpClient()
    except Exception:  # noqa: BLE001 - the extra is not installed
        return ["httpx"]
    # not httpx as well: its connection pool is quadratic in connections (at 4,000 in flight it
    # had not replayed 8,000 calls after minutes; aiohttp takes ~15 s) and it never set the bound
    return ["aiohttp", "aiohttp+post"]


async def bare_loop(url: str, bodies: list[dict[str, Any]], calls: int, in_flight: int, transport: str,
                    tuned: bool = False) -> float:
    """calls/s of a bare openai.AsyncOpenAI loop (no retries, no validation, no records) sending
    ``calls`` of ``bodies`` (the low-load run's requests, cycled: the same messages, schemas and
    sampling), with as many connections as calls in flight; ``tuned``: with the garbage collector
    as a run has it (thresholds, and collections paced by this loop)."""
    import httpx
    import openai

    # one connection per call in flight, as simlab's client opens (the SDK's default pool of
    # 1,000 held the bare loop at 1,000 / latency calls/s, below what its CPU allows)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    http = (openai.DefaultAioHttpClient(timeout=120, limits=limits) if transport.startswith("aiohttp")
            else openai.DefaultAsyncHttpxClient(timeout=120, limits=limits))
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=120, http_client=http)
    gate = asyncio.Semaphore(in_flight)

    finished: list[float] = []

    async def one(body: dict[str, Any]) -> None:
        async with gate:
            if transport.endswith("+post"):
                await client.post("/chat/completions", cast_to=object, body=body)
            else:
                await client.chat.completions.create(**body)
        finished.append(time.perf_counter())

    with gc_for_many_sessions() if tuned else contextlib.nullcontext():
        await asyncio.gather(*(one(bodies[i % len(bodies)]) for i in range(calls)))
    await client.close()
    # the steady state: calls finished between the 10th and 90th percentile of finishing times
    # (the first replies wait one whole latency, and the last ones find the CPU idle)
    lo, hi = finished[calls // 10], finished[(9 * calls) // 10]
    return ((9 * calls) // 10 - calls // 10) / (hi - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--in-flight", type=int, default=None,
                    help="the endpoint's in-flight bound (default: 4 × concurrency, a fleet that never queues)")
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--per-token", type=float, default=0.015)
    ap.add_argument("--jitter", type=float, default=0.2)
    # 24 sessions of 2-6 turns gave a mean latency with ~6% standard error (the bound moved 19.9 ->
    # 21.8 sessions/s between two runs); 200 take no longer (they run at once, ~7% of a core)
    ap.add_argument("--baseline", type=int, default=200, help="sessions of the low-load run (Little's law)")
    ap.add_argument("--client-calls", type=int, default=20000, help="calls the bare openai loop replays")
    ap.add_argument("--faults", action="store_true", help="also run the same sessions against a faulty fleet")
    ap.add_argument("--fault-timeout", type=float, default=10.0,
                    help="the client's timeout in the faulty run, s (what a hung call costs)")
    ap.add_argument("--progress", action="store_true", help="show the run's progress bar")
    ap.add_argument("--out", help="keep the run directories here (default: a temporary folder)")
    args = ap.parse_args()
    in_flight = args.in_flight or 4 * args.concurrency
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)

    tmp = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="simlab-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    n_people = math.ceil(args.sessions / len(DOMAINS))
    make_personas(n_people, tmp / "personas.jsonl")
    make_personas(math.ceil(args.baseline / len(DOMAINS)), tmp / "baseline.jsonl")
    stub = Stub(args, record=tmp / "baseline-requests.jsonl")
    out: dict[str, Any] = {}
    try:
        # 1. Little's law: mean session latency at low load (its personas are not the run's)
        base_cfg = make_config(tmp / "baseline.jsonl", tmp / "baseline", args.baseline, in_flight, timeout_s=120)
        base = asyncio.run(run(base_cfg, stub.url, progress=False))
        mean_latency = sum(base.session_s) / len(base.session_s)
        little = args.concurrency / mean_latency
        base_calls = store_counts(base.run_dir)["calls"] / max(1, base.sessions_completed)
        print(f"low load: {len(base.session_s)} sessions, mean {mean_latency:.1f} s, "
              f"{base_calls:.1f} calls per session; Little's bound {little:.2f} sessions/s", file=sys.stderr)

        # 2. the machine's client bound: the low-load run's requests, replayed by a bare client
        stub.close()
        bodies = [json.loads(line) for line in (tmp / "baseline-requests.jsonl").read_text().splitlines()]
        stub = Stub(args)
        n_bare = min(args.client_calls, int(args.sessions * base_calls))
        bare: dict[str, tuple[float, float]] = {}
        for transport in transports():  # the bound is the fastest bare client
            asyncio.run(bare_loop(stub.url, bodies, min(200, n_bare), min(in_flight, 200), transport))  # warm-up
            c0 = time.process_time()
            rate = asyncio.run(bare_loop(stub.url, bodies, n_bare, in_flight, transport, tuned=True))
            bare[transport] = rate, (time.process_time() - c0) / n_bare
            print(f"bare openai loop ({transport}): {rate:.0f} calls/s, {bare[transport][1] * 1e3:.2f} ms CPU per call",
                  file=sys.stderr)
        best = max(bare, key=lambda t: bare[t][0])
        bare_rate, bare_cpu = bare[best]

        # 3. the run
        config = make_config(tmp / "personas.jsonl", tmp / "run", args.concurrency, in_flight, timeout_s=120)
        # the RSS after a fifth of the sessions (2,000 of 10,000) against the end's: flat, or a leak
        monitor = Monitor(store_under=tmp / "run", checkpoint=args.sessions // 5)
        before = stub.stats()["requests"]
        c0, w0 = time.process_time(), time.perf_counter()
        summary = asyncio.run(run(config, stub.url, progress=args.progress, monitor=monitor))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        counts = store_counts(summary.run_dir)
        stats = stub.stats()
        requests = stats["requests"] - before
        calls_per_session = counts["calls"] / max(1, counts["sessions"] + counts["failures"])
        client = bare_rate / calls_per_session
        ideal = min(little, client)
        done = summary.sessions_completed + summary.sessions_failed
        assert done == args.sessions == counts["distinct"], (done, args.sessions, counts)
        print(summary.text(), file=sys.stderr)

        # 4. resume a finished run: nothing to do
        w1 = time.perf_counter()
        again = asyncio.run(run_experiment(config, base_urls={"fleet": stub.url}, progress=False, report=False))
        resume_s = time.perf_counter() - w1
        assert again.sessions_completed == summary.sessions_completed and not again.session_s

        out = {
            "sessions": args.sessions, "concurrency": args.concurrency, "wall_s": round(wall, 1),
            "sessions_per_s": round(args.sessions / wall, 3), "ideal_sessions_per_s": round(ideal, 3),
            "ideal_basis": "little" if little <= client else "client",
            "ratio_vs_ideal": round(args.sessions / wall / ideal, 3),
            "cpu_ms_per_call": round(cpu / max(1, requests) * 1e3, 2),
            "peak_rss_mib": round(monitor.peak_rss / 2**20, 1),
            "loop_lag_p99_ms": round(pct(monitor.lags, 0.99) * 1e3, 1),
            "loop_lag_p50_ms": round(pct(monitor.lags, 0.5) * 1e3, 1),
            "loop_lag_p95_ms": round(pct(monitor.lags, 0.95) * 1e3, 1),
            "loop_lag_max_ms": round(max(monitor.lags, default=float("nan")) * 1e3, 1),
            # where the loop was when it was more than 50 ms late: stack (or collection) → seconds
            "loop_stalled_in": monitor.sampler.top(8),
            "rss_checkpoint_sessions": args.sessions // 5,
            "rss_at_checkpoint_mib": (round(monitor.rss_at_checkpoint / 2**20, 1)
                                      if monitor.rss_at_checkpoint else None),
            "rss_end_mib": round(monitor.rss_end / 2**20, 1),
            "rss_end_vs_checkpoint": (round(monitor.rss_end / monitor.rss_at_checkpoint, 3)
                                      if monitor.rss_at_checkpoint else None),
            "commit_ms_p99": round(pct(summary.commit_s, 0.99) * 1e3, 1),
            "resume_s": round(resume_s, 2),
            # the bounds and what they rest on
            "little_sessions_per_s": round(little, 3), "client_sessions_per_s": round(client, 3),
            "low_load_session_s": round(mean_latency, 2), "calls_per_session": round(calls_per_session, 2),
            "bare_calls_per_s": round(bare_rate, 1), "bare_cpu_ms_per_call": round(bare_cpu * 1e3, 2),
            "bare_transport": best,
            **{f"bare_{t.replace('+', '_')}_calls_per_s": round(r, 1) for t, (r, _) in bare.items()},
            "stub_max_in_flight": stats["max_in_flight"], "completed": summary.sessions_completed,
            "failed": summary.sessions_failed, "session_s_p50": round(pct(summary.session_s, 0.5), 1),
            "session_s_p99": round(pct(summary.session_s, 0.99), 1),
            # the collector's pauses during the run, by generation: count, total s, longest ms
            **{f"gc{g}": [len(p), round(sum(p), 2), round(max(p, default=0) * 1e3, 1)]
               for g, p in monitor.gc_pauses.items()},
        }
    finally:
        stub.close()

    if args.faults:
        faulty = Stub(args, FAULTS)
        try:
            config = make_config(tmp / "personas.jsonl", tmp / "faults", args.concurrency, in_flight,
                                 timeout_s=args.fault_timeout)
            w0 = time.perf_counter()
            summary = asyncio.run(run(config, faulty.url, progress=args.progress))
            fwall = time.perf_counter() - w0
            counts = store_counts(summary.run_dir)
            print(summary.text(), file=sys.stderr)
            print(f"stub answers: {faulty.stats()['status']}", file=sys.stderr)
            out.update({
                "faults": ",".join(FAULTS), "fault_wall_s": round(fwall, 1),
                "fault_wall_ratio": round(fwall / out["wall_s"], 2),
                "fault_completed": counts["sessions"], "fault_failed": counts["failures"],
                "fault_accounted": round(counts["distinct"] / args.sessions, 4),
                "fault_duplicated": counts["both"] + (counts["sessions"] + counts["failures"] - counts["distinct"]),
                "fault_stopped": summary.stopped,
            })
        finally:
            faulty.close()
    print(json.dumps(out))
    if not args.out:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
