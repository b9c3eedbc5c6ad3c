"""``simlab view`` at scale: the sessions table of a 10,000-session run, served by the real CLI.

The store is generated, never committed: a real run against the stub server (6 sample personas ×
4 domains, 1–2 turns, or ``--template RUN`` to start from a run you have) is the template, and its
sessions are copied under new participant ids (``<participant>-<k>``) until the store holds
``--sessions`` of them: every table a run writes (sessions, participants, conversations, turns,
judgements, bdm, llm_calls, instruments, answers), preference ratings redrawn per copy so the
rating filter and sort have a spread, and 1% of extra participants failed (failures rows, two
causes). Then ``python -m simlab.view RUN --port 0`` starts as its own process and this script
times, with plain HTTP GETs:

- the time from the command to its printed URL (the viewer builds each run's sessions summary
  before it listens),
- the first page of the sessions table (cold: the server's first request of it; then one warm-up
  and the median of ``--reps``),
- a filter (``?domain=values&status=completed&rating_min=50``), a sorted page
  (``?sort=rating&order=desc&page=3``), the run page and a conversation page (each: cold, then the
  median of ``--reps`` after a warm-up),

and reads the server's resident memory (VmRSS, and VmHWM: its peak) from /proc/PID/status.

The last line is the JSON result. Run:
    .venv/bin/python benchmarks/view_bench.py --sessions 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["unguided", "values", "controversy", "emotional_wellbeing"]
# tables keyed by conversation: copied row for row under the new ids
COPIED = ("sessions", "conversations", "turns", "judgements", "bdm", "instruments", "answers")
FAILURES = [("StructuredOutputError", "the ranking reply kept failing its schema after 3 attempts: '{}'"),
            ("EndpointError", "HTTP 500 from the endpoint after 5 attempts")]


def make_template(out: Path, personas: int = 6) -> Path:
    """A real run of ``personas`` sample personas × 4 domains against the stub server (1–2 turns)."""
    from simlab.config import default_config, parse_config
    from simlab.run import run_experiment
    from simlab.testing import StubServer

    lines = [line for line in (ROOT / "personas" / "sample.jsonl").read_text().splitlines() if line.strip()]
    (out / "personas.jsonl").write_text("\n".join(lines[:personas]) + "\n")
    with StubServer() as srv:
        d = default_config().public_dict()
        d["endpoints"] = {"local": {"kind": "vllm", "base_url": srv.base_url}}
        d["out_dir"] = str(out / "template-runs")
        d["personas"] = str(out / "personas.jsonl")
        d["summary"]["cache_dir"] = str(out / "summaries")
        d["protocol"]["domains"] = DOMAINS
        d["protocol"]["min_turns"], d["protocol"]["max_turns"] = 1, 2
        summary = asyncio.run(run_experiment(parse_config(d), progress=False, report=False))
    return Path(summary.run_dir)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def grow(template: Path, out: Path, sessions: int, seed: int = 0) -> Path:
    """A run directory ``out`` holding the template's store grown to ``sessions`` completed sessions
    (plus 1% of that failed)."""
    from simlab.store.connection import STORE_FILE, closing, connect
    from simlab.store.readers import open_readonly

    out.mkdir(parents=True, exist_ok=True)
    target = out / STORE_FILE
    with closing(open_readonly(template)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    rng = random.Random(seed)
    with closing(connect(target)) as conn:
        originals = conn.execute("SELECT conversation_id, participant_id FROM conversations ORDER BY conversation_id").fetchall()
        for cid, pid in originals:
            if not cid.startswith(pid):
                raise SystemExit(f"template conversation {cid!r} does not start with its participant id {pid!r}")
        if not originals:
            raise SystemExit(f"the template run {template} has no completed session to copy")
        mapping = []
        k = 0
        while len(originals) + len(mapping) < sessions:
            k += 1
            for cid, pid in originals[: sessions - len(originals) - len(mapping)]:
                new_pid = f"{pid}-{k:05d}"
                mapping.append((cid, new_pid + cid[len(pid):], pid, new_pid))
        conn.execute("BEGIN")
        conn.execute("CREATE TEMP TABLE m (old_cid TEXT, new_cid TEXT, old_pid TEXT, new_pid TEXT)")
        conn.executemany("INSERT INTO m VALUES (?, ?, ?, ?)", mapping)
        conn.execute("CREATE INDEX temp.m_old ON m (old_cid)")
        cols = _columns(conn, "participants")
        picks = ["p.new_pid" if c == "participant_id" else f"t.{c}" for c in cols]
        conn.execute(f"INSERT OR IGNORE INTO participants ({', '.join(cols)}) SELECT {', '.join(picks)} "
                     "FROM participants t JOIN (SELECT DISTINCT old_pid, new_pid FROM m) p ON t.participant_id = p.old_pid")
        for table in COPIED:
            cols = _columns(conn, table)
            picks = []
            for c in cols:
                if c == "conversation_id":
                    picks.append("m.new_cid")
                elif c == "participant_id":
                    picks.append("m.new_pid")
                elif c == "rating_preference":  # a spread of ratings for the filter and the sort
                    picks.append("CASE WHEN t.rating_preference IS NULL THEN NULL ELSE abs(random()) % 101 END")
                else:
                    picks.append(f"t.{c}")
            conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(picks)} "
                         f"FROM {table} t JOIN m ON t.conversation_id = m.old_cid")
        cols = [c for c in _columns(conn, "llm_calls") if c != "call_id"]
        picks = ["m.new_cid" if c in ("conversation_id", "recorded_with") else f"t.{c}" for c in cols]
        conn.execute(f"INSERT INTO llm_calls ({', '.join(cols)}) SELECT {', '.join(picks)} "
                     "FROM llm_calls t JOIN m ON t.recorded_with = m.old_cid")
        failed = []
        for i in range(max(1, sessions // 100)):
            error_type, reason = FAILURES[i % len(FAILURES)]
            pid = f"{originals[0][1]}-failed{i:04d}"
            failed.append((f"{pid}:{rng.choice(DOMAINS)}", pid, error_type, reason))
        conn.executemany("INSERT INTO failures (conversation_id, participant_id, domain, error_type, reason, failed_at) "
                         "VALUES (?, ?, substr(?, instr(?, ':') + 1), ?, ?, '2026-12-08T00:00:00+00:00')",
                         [(c, p, c, c, e, r) for c, p, e, r in failed])
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return out


class Viewer:
    """``python -m simlab.view RUN --port 0`` as its own process; its printed URL."""

    def __init__(self, run: Path) -> None:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "simlab.view", str(run), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "http://" not in line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise SystemExit(f"simlab view did not print its URL: {line!r} {err[-2000:]}")
        self.url = line.split("http://", 1)[1].split()[0].rstrip("/")
        self.url = "http://" + self.url
        self.startup_s = round(time.perf_counter() - t0, 2)
        """From the command to its printed URL (Python's imports and each run's sessions summary)."""

    def get(self, path: str) -> tuple[int, float, int]:
        """(status, milliseconds, bytes) of one GET."""
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url + path, timeout=120) as r:
                body, status = r.read(), r.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        return status, (time.perf_counter() - t0) * 1000, len(body)

    def memory_mb(self) -> dict[str, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        out = {}
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def measure(viewer: Viewer, path: str, reps: int) -> dict[str, Any]:
    """Cold (the first GET of ``path``), then one warm-up and the median of ``reps``."""
    status, cold, size = viewer.get(path)
    viewer.get(path)
    times = [viewer.get(path)[1] for _ in range(reps)]
    return {"path": path, "status": status, "bytes": size, "cold_ms": round(cold, 1),
            "median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=10_000, help="completed sessions in the generated store")
    p.add_argument("--reps", type=int, default=5, help="timed GETs per page after the warm-up (median)")
    p.add_argument("--template", type=Path, help="a run to copy sessions from (default: a stub run made here)")
    p.add_argument("--work", type=Path, help="where to generate the store (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="view-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        template = args.template or make_template(work)
        t1 = time.perf_counter()
        run = grow(template, work / "runs" / f"view-bench-{args.sessions}", args.sessions)
        t2 = time.perf_counter()
        with sqlite3.connect(run / "store.sqlite") as conn:
            rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("sessions", "turns", "judgements", "llm_calls", "failures")}
            cid = conn.execute("SELECT conversation_id FROM conversations ORDER BY conversation_id LIMIT 1 OFFSET ?",
                               (args.sessions // 2,)).fetchone()[0]
        from simlab.view.core import conversation_url

        viewer = Viewer(run)
        try:
            base = f"/runs/{run.name}"
            pages = {
                "first_page": f"{base}/sessions",
                "filter": f"{base}/sessions?domain=values&status=completed&rating_min=50",
                "sorted": f"{base}/sessions?sort=rating&order=desc&page=3",
                "run_page": base,
                "conversation": conversation_url(run.name, cid),
            }
            timings = {name: measure(viewer, path, args.reps) for name, path in pages.items()}
            memory = viewer.memory_mb()
            startup_s = viewer.startup_s
        finally:
            viewer.close()
    result = {"sessions": args.sessions, "rows": rows, "template_s": round(t1 - t0, 1), "generate_s": round(t2 - t1, 1),
              "startup_s": startup_s,
              "pages": timings, "memory_mb": memory, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for name, t in timings.items():
        print(f"{name:13s} {t['status']}  cold {t['cold_ms']:7.1f} ms  median {t['median_ms']:7.1f} ms  {t['path']}")
    print(f"server memory: {memory}  started in {startup_s} s  generated in {result['generate_s']} s  rows {rows}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
