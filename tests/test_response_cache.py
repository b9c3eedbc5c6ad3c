"""The response cache: content-addressed (a change to any part of the key misses), shared across runs and
processes (two writers at once never get a reply of another key, and the file stays whole), unseeded
requests left out unless asked for, and a rerun of a finished study served from it."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from simlab.errors import ConfigError
from simlab.llm import LLMClient
from simlab.llm.cache import ResponseCache, check_cache_path
from simlab.llm.config import ModelSpec, SamplingConfig, VllmEndpoint
from simlab.llm.pricing import Ledger, Pricing, PricingTable
from simlab.llm.transport import Reply
from simlab.run import main, run_experiment
from simlab.store import read_table
from simlab.testing import StubServer
from tests.conftest import REPO, stub_config

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "top_p": 1.0,
        "max_tokens": 16, "seed": 7}
EP = {"kind": "vllm", "base_url": "http://127.0.0.1:8000/v1"}


class Pick(BaseModel):
    choice: int


@pytest.mark.parametrize(("part", "change"), [
    ("template hash", {"prompt_hash": "other"}),
    ("sampling", {"body": {"temperature": 0.2}}),
    ("max_tokens", {"body": {"max_tokens": 17}}),
    ("seed", {"body": {"seed": 8}}),
    ("model", {"body": {"model": "m2"}}),
    ("schema", {"body": {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}}),
    ("messages", {"body": {"messages": [{"role": "user", "content": "hi!"}]}}),
    ("soft tokens", {"body": {"prompt_embeds": "QUJD"}}),
    ("endpoint's server", {"endpoint": {"kind": "vllm", "base_url": "http://127.0.0.1:9000/v1"}}),
    ("endpoint's launched model", {"endpoint": {**EP, "launch": {"model": "other-weights"}}}),
])
def test_a_change_to_any_key_part_misses(tmp_path: Path, part: str, change: dict) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    base = cache.key(BODY, endpoint_identity=EP, prompt_hash="h")
    cache.put(base, Reply("cached", "stop", "m", 1, 1))
    changed = cache.key({**BODY, **change.get("body", {})}, endpoint_identity=change.get("endpoint", EP),
                        prompt_hash=change.get("prompt_hash", "h"))
    assert changed != base and cache.get(changed) is None, part
    assert cache.get(cache.key(dict(BODY), endpoint_identity=dict(EP), prompt_hash="h")).text == "cached"  # type: ignore[union-attr]


def test_a_repeated_request_is_served_from_the_cache_at_no_cost_and_saves_its_price(tmp_path: Path) -> None:
    table = PricingTable.model_validate({"models": {"m": {"input": 1.0, "output": 1.0}}})
    with StubServer() as server:
        endpoints = {"s": VllmEndpoint(base_url=server.base_url)}
        msgs = [{"role": "user", "content": "a b c"}]

        async def calls() -> list[object]:
            cache = ResponseCache(tmp_path / "c.sqlite")
            client = LLMClient(endpoints, ledger=Ledger(Pricing(table)), cache=cache)
            seeded = ModelSpec(endpoint="s", model="m", sampling=SamplingConfig(seed=3))
            first = await client.chat(seeded, msgs, prompt_hash="t1")
            n = server.n_requests
            again = await client.chat(seeded, msgs, prompt_hash="t1")
            assert server.n_requests == n  # not sent
            other_template = await client.chat(seeded, msgs, prompt_hash="t2")
            assert server.n_requests == n + 1
            structured = await client.structured(seeded, msgs, Pick, prompt_hash="t1")
            structured_again = await client.structured(seeded, msgs, Pick, prompt_hash="t1")
            await client.aclose()
            return [first, again, other_template, structured, structured_again, cache]

        first, again, other, structured, structured_again, cache = asyncio.run(calls())
    assert again.text == first.text and again.call.cost_usd == 0 and again.call.price_source == "cache"  # type: ignore[attr-defined]
    assert first.call.cost_usd > 0 and other.call.price_source == "table"  # type: ignore[attr-defined]
    assert structured_again.value == structured.value and structured_again.call.price_source == "cache"  # type: ignore[attr-defined]
    assert cache.hits == 2 and cache.misses == 3  # type: ignore[attr-defined]
    assert cache.saved_usd == pytest.approx(first.call.cost_usd + structured.call.cost_usd)  # type: ignore[attr-defined]


def test_unseeded_sampling_is_never_cached_unless_asked(tmp_path: Path) -> None:
    with StubServer() as server:
        endpoints = {"s": VllmEndpoint(base_url=server.base_url)}
        unseeded = ModelSpec(endpoint="s", model="m")
        msgs = [{"role": "user", "content": "x"}]

        async def twice(cache: ResponseCache) -> int:
            client = LLMClient(endpoints, cache=cache)
            before = server.n_requests
            await client.chat(unseeded, msgs)
            await client.chat(unseeded, msgs)
            await client.aclose()
            return server.n_requests - before

        assert asyncio.run(twice(ResponseCache(tmp_path / "a.sqlite"))) == 2
        assert asyncio.run(twice(ResponseCache(tmp_path / "b.sqlite", unseeded=True))) == 1
    assert sqlite3.connect(tmp_path / "a.sqlite").execute("SELECT count(*) FROM replies").fetchone()[0] == 0


WRITER = textwrap.dedent("""
    import sys
    from simlab.llm.cache import ResponseCache
    from simlab.llm.transport import Reply
    cache = ResponseCache(sys.argv[1])
    me, wrong = sys.argv[2], 0
    for i in range(int(sys.argv[3])):
        for j in (i, i + 1):  # keys the other process writes too
            key = cache.key({"model": "m", "n": j, "seed": 1}, endpoint_identity={"kind": "vllm"})
            got = cache.get(key)
            if got is None:
                cache.put(key, Reply(f"reply to {j}", "stop", me, 1, 1))
            elif got.text != f"reply to {j}":
                wrong += 1
    print(wrong, cache.hits)
""")


def test_two_processes_at_once_never_get_a_reply_of_another_key_and_the_file_stays_whole(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    ResponseCache(path).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, "400"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [tuple(int(x) for x in out.split()) for out, _ in outs]
    assert all(wrong == 0 for wrong, _ in results) and all(hits > 0 for _, hits in results)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM replies").fetchone()[0] == 401  # each key once
    cache = ResponseCache(path)
    for j in range(401):
        got = cache.get(cache.key({"model": "m", "n": j, "seed": 1}, endpoint_identity={"kind": "vllm"}))
        assert got is not None and got.text == f"reply to {j}"


def test_a_rerun_of_a_finished_study_is_served_from_the_cache(tmp_path: Path) -> None:
    with StubServer(deterministic=True) as server:
        def cfg(out: str):  # type: ignore[no-untyped-def]
            return stub_config(server, tmp_path, limit=2, concurrency=2, out_dir=str(tmp_path / out),
                               cache=str(tmp_path / "replies.sqlite"),
                               protocol={"domains": ["unguided"], "min_turns": 2, "max_turns": 2},
                               pricing={"models": {"smollm2-135m": {"input": 100.0, "output": 300.0}}})

        cold = asyncio.run(run_experiment(cfg("cold"), progress=False, report=False))
        sent = server.n_requests
        warm = asyncio.run(run_experiment(cfg("warm"), progress=False, report=False))
        assert server.n_requests == sent  # every request was the cold run's
    assert cold.cache_hits == 0 and warm.cache_hits == warm.cache_lookups > 0
    assert warm.spent_usd == 0 and warm.cache_saved_usd == pytest.approx(cold.spent_usd)
    assert "response cache: " in warm.text() and "(100%)" in warm.text()
    cols = ["conversation_id", "turn", "role", "arm", "text"]
    assert read_table(warm.run_dir, "turns")[cols].equals(read_table(cold.run_dir, "turns")[cols])
    assert (read_table(warm.run_dir, "llm_calls")["price_source"] == "cache").all()


def test_a_cache_path_that_cannot_hold_a_cache_exits_2_before_any_call(tmp_path: Path, capsys) -> None:
    from tests.test_run_cli import stub_toml

    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a cache")
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)")
    (tmp_path / "afile").write_text("x")
    with StubServer() as server:
        config = stub_toml(tmp_path, server.base_url, limit="1")
        for bad in ("folder", "notes.txt", "other.sqlite", "afile/cache.sqlite"):
            assert main(["--config", str(config), "--cache", str(tmp_path / bad), "--quiet", "--no-report"]) == 2, bad
            err = capsys.readouterr().err
            assert str(tmp_path / bad) in err and "--cache" in err, err
        assert server.n_requests == 0
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError):
        check_cache_path(tmp_path / "folder")
