"""Study economics: every call's dollars (pricing table, litellm's offline map, GPU hours), kept per
call in the store, summed per role, arm, session and study in the summary, the report and the exports;
a budget that stops a run cleanly and a resume with a higher one that finishes it; bad prices refused."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

from simlab.errors import ConfigError, StructuredOutputError
from simlab.llm import LLMClient
from simlab.llm.config import LitellmEndpoint, ModelSpec, SamplingConfig, VllmEndpoint
from simlab.llm.pricing import Ledger, Pricing, PricingTable, litellm_cost_map, load_pricing
from simlab.records import LLMCallRecord
from simlab.run import main, run_experiment
from simlab.store import STORE_FILE, read_counts, read_table, run_meta
from simlab.testing import Fault, StubServer
from tests.conftest import stub_config

PRICES = {"models": {"cheap": {"input": 1.0, "output": 2.0},
                     "dear": {"input": 10.0, "output": 30.0, "cached_input": 2.5}}}


class Pick(BaseModel):
    choice: int


def _words(text: str) -> int:
    return len(text.split())


def test_costs_match_hand_computation_for_mixed_models_retries_and_failures() -> None:
    replies = {"cheap": ["one two three"], "dear": ["four five"], "nobody": ["six"]}
    with StubServer(replies=replies, cached_tokens=2) as server:
        ledger = Ledger(Pricing(PricingTable.model_validate(PRICES)))
        client = LLMClient({"s": VllmEndpoint(base_url=server.base_url, max_attempts=3, timeout_s=5)}, ledger=ledger)
        msgs = [{"role": "user", "content": "a b c d e"}]  # the stub counts words: 5 prompt tokens

        def spec(model: str) -> ModelSpec:
            return ModelSpec(endpoint="s", model=model, sampling=SamplingConfig(seed=1))

        async def calls() -> list[object]:
            out: list[object] = []
            out.append((await client.chat(spec("cheap"), msgs)).call)
            out.append((await client.chat(spec("dear"), msgs)).call)
            server.add_fault(Fault(status=500))  # a retry: the failed attempt brought no usage
            out.append((await client.chat(spec("cheap"), msgs)).call)
            server.add_fault(Fault(status=400))  # a call that fails for good: nothing came back
            try:
                await client.chat(spec("cheap"), msgs)
            except Exception as exc:  # noqa: BLE001 - the record is what is checked
                out.append(exc.call)  # type: ignore[attr-defined]
            out.append((await client.chat(spec("nobody"), msgs)).call)
            await client.aclose()
            return out

        cheap, dear, retried, failed, nobody = asyncio.run(calls())

    # by hand: cheap (1, 2) $/M; dear (10, 30) with 2 of its 5 prompt tokens cached at 2.5
    assert cheap.cost_usd == pytest.approx((5 * 1 + 3 * 2) / 1e6)  # type: ignore[attr-defined]
    assert dear.cost_usd == pytest.approx((3 * 10 + 2 * 2.5 + 2 * 30) / 1e6)  # type: ignore[attr-defined]
    assert dear.cached_tokens == 2 and dear.price_source == "table"  # type: ignore[attr-defined]
    assert retried.attempts == 2 and retried.cost_usd == pytest.approx(cheap.cost_usd)  # type: ignore[attr-defined]
    assert failed.status == "error" and failed.cost_usd == 0 and failed.price_source is None  # type: ignore[attr-defined]
    assert nobody.cost_usd == 0 and nobody.price_source == "unpriced"  # type: ignore[attr-defined]
    assert ledger.unpriced == {"s/nobody": 1}
    total = sum(c.cost_usd for c in (cheap, dear, retried, failed, nobody))  # type: ignore[attr-defined]
    assert ledger.spent == pytest.approx(total)


def test_every_schema_attempt_of_a_structured_call_is_summed() -> None:
    with StubServer() as server:
        ledger = Ledger(Pricing(PricingTable.model_validate(PRICES)))
        client = LLMClient({"s": VllmEndpoint(base_url=server.base_url, schema_attempts=2)}, ledger=ledger)
        for _ in range(2):
            server.add_fault(Fault(kind="schema_violation"))

        async def call() -> object:
            try:
                await client.structured(ModelSpec(endpoint="s", model="cheap"), [{"role": "user", "content": "x y"}],
                                        Pick)
            except StructuredOutputError as exc:
                return exc.call
            finally:
                await client.aclose()
            raise AssertionError("the schema was broken twice")

        record = asyncio.run(call())
    assert record.attempts == 2 and record.status == "schema_error"  # type: ignore[attr-defined]
    by_hand = (record.prompt_tokens * 1 + record.completion_tokens * 2) / 1e6  # type: ignore[attr-defined]
    assert record.prompt_tokens == 2 * 2 and by_hand > 0  # type: ignore[attr-defined]
    assert record.cost_usd == pytest.approx(by_hand)  # type: ignore[attr-defined]
    assert ledger.spent == pytest.approx(by_hand)


def test_litellm_offline_map_prices_a_known_hosted_model_with_no_network(monkeypatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    pricing = Pricing()
    entry = litellm_cost_map()["gpt-4o-mini"]
    rate = pricing.rate("hosted", "litellm", "gpt-4o-mini")
    assert rate.source == "litellm"
    assert (rate.input, rate.output, rate.cached_input) == (
        entry["input_cost_per_token"], entry["output_cost_per_token"], entry["cache_read_input_token_cost"])
    assert pricing.rate("hosted", "litellm", "openai/gpt-4o-mini") == rate  # the provider's own prefix
    assert pricing.rate("hosted", "litellm", "anthropic/gpt-4o-mini").source == "unpriced"  # not that provider's
    # a self-served model is never priced by a hosted provider's list, whatever its name
    assert pricing.rate("gpu", "vllm", "gpt-4o-mini").source == "unpriced"
    # the table wins over the map; a GPU-hour endpoint charges its share of the server's hour
    table = PricingTable.model_validate({"models": {"gpt-4o-mini": {"input": 1, "output": 1}},
                                         "endpoints": {"gpu": {"gpu_hour_usd": 3.6}}})
    assert Pricing(table).rate("hosted", "litellm", "gpt-4o-mini").source == "table"
    gpu = Pricing(table).rate("gpu", "vllm", "any", in_flight=4)
    assert gpu.source == "gpu_hour" and gpu.cost(seconds=10) == pytest.approx(3.6 / 3600 * 10 / 4)


def test_the_map_is_litellms_own_model_cost() -> None:
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    assert litellm.model_cost["gpt-4o-mini"]["input_cost_per_token"] == litellm_cost_map()["gpt-4o-mini"][
        "input_cost_per_token"]
    assert LitellmEndpoint().kind == "litellm"


def _priced(tmp_path: Path, server: StubServer, **overrides: object):
    settings: dict[str, object] = {
        "limit": 2, "concurrency": 2, "protocol": {"domains": ["unguided"], "min_turns": 2, "max_turns": 2},
        "pricing": {"models": {"smollm2-135m": {"input": 100.0, "output": 300.0}}}}
    return stub_config(server, tmp_path, **{**settings, **overrides})


def _run(cfg, **kw):  # type: ignore[no-untyped-def]
    return asyncio.run(run_experiment(cfg, progress=False, report=False, **kw))


def test_a_run_keeps_each_calls_cost_and_sums_it_per_role_arm_session_and_study(tmp_path: Path) -> None:
    with StubServer(deterministic=True) as server:
        summary = _run(_priced(tmp_path, server))
    calls = read_table(summary.run_dir, "llm_calls")
    by_hand = (calls["prompt_tokens"] * 100 + calls["completion_tokens"] * 300).sum() / 1e6
    assert calls["price_source"].eq("table").all()
    assert calls["cost_usd"].sum() == pytest.approx(by_hand) and summary.cost_usd == pytest.approx(by_hand)
    assert summary.spent_usd == pytest.approx(by_hand) and summary.spent_total_usd == pytest.approx(by_hand)
    arms = calls[calls["role"] == "arm"].groupby("arm")["cost_usd"].sum()
    assert summary.cost_by_arm == pytest.approx(arms.to_dict())
    assert sum(summary.cost_by_role.values()) == pytest.approx(by_hand)
    assert set(summary.cost_by_role) >= {"arm", "simulator"}
    per_session = calls.dropna(subset=["conversation_id"]).groupby("conversation_id")["cost_usd"].sum()
    assert summary.session_cost_usd == pytest.approx((per_session.mean(), per_session.max()))
    text = summary.text()
    assert f"${by_hand:.4f} this call" in text and "cost per arm: GEN=$" in text and "unpriced" not in text
    assert run_meta(summary.run_dir)["spend_usd"] == pytest.approx(by_hand)


def test_an_unpriced_model_is_counted_as_zero_and_named(tmp_path: Path) -> None:
    with StubServer(deterministic=True) as server:
        summary = _run(_priced(tmp_path, server, pricing={}))
    assert summary.cost_usd == 0 and summary.unpriced == {"local/smollm2-135m": read_counts(summary.run_dir).llm_calls}
    assert "unpriced models, counted as $0 (give their prices in [pricing] or --pricing): local/smollm2-135m" in \
        summary.text()


def test_a_budget_stops_the_run_before_it_is_crossed_and_a_higher_one_finishes_it(tmp_path: Path) -> None:
    with StubServer(deterministic=True) as server:
        full = _run(_priced(tmp_path / "full", server, limit=3, concurrency=1))
        budget = full.cost_usd / 2
        cut = _run(_priced(tmp_path, server, limit=3, concurrency=1, budget_usd=budget))
        assert cut.budget_stop and cut.stopped and cut.sessions_failed == 0
        assert 0 < cut.sessions_completed < cut.sessions_planned
        assert cut.spent_total_usd <= budget  # stopped before the spend crossed it
        assert f"--resume {cut.run_dir} --budget" in cut.text()
        stored = read_table(cut.run_dir, "llm_calls")["cost_usd"].sum()
        assert stored <= cut.spent_total_usd + 1e-12  # calls of sessions cut short are spent, not stored
        again = _run(_priced(tmp_path, server, limit=3, concurrency=1, budget_usd=budget))  # the same budget
        assert again.budget_stop and again.spent_total_usd <= budget and again.sessions_failed == 0
        done = _run(_priced(tmp_path, server, limit=3, concurrency=1, budget_usd=full.cost_usd * 3))
    assert not done.stopped and done.sessions_completed == done.sessions_planned == full.sessions_planned
    assert done.spent_total_usd <= full.cost_usd * 3
    assert read_table(done.run_dir, "conversations")["conversation_id"].tolist() == \
        read_table(full.run_dir, "conversations")["conversation_id"].tolist()


def _downgrade_to_v5(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for column in ("cached_tokens", "cost_usd", "price_source"):
        conn.execute(f"ALTER TABLE llm_calls DROP COLUMN {column}")
    conn.execute("UPDATE meta SET value = '5' WHERE key = 'store_schema'")
    conn.close()


def test_a_store_written_before_costs_opens_reports_and_resumes_with_its_calls_uncosted(tmp_path: Path) -> None:
    with StubServer(deterministic=True) as server:
        cfg = _priced(tmp_path, server, limit=1)
        first = _run(cfg)
        _downgrade_to_v5(first.run_dir / STORE_FILE)
        old_calls = read_table(first.run_dir, "llm_calls")  # a reader sees the columns, empty
        assert old_calls["cost_usd"].isna().all() and old_calls["price_source"].isna().all()
        assert read_counts(first.run_dir).uncosted_calls == len(old_calls)
        more = _run(cfg.model_copy(update={"limit": 2}))  # the resume migrates the store and adds a persona
    assert run_meta(more.run_dir)["store_schema"] == 6
    calls = read_table(more.run_dir, "llm_calls")
    assert calls["cost_usd"].isna().sum() == len(old_calls) and more.uncosted_calls == len(old_calls)
    assert calls["cost_usd"].sum() > 0 and more.cost_usd == pytest.approx(calls["cost_usd"].sum())
    assert f"{len(old_calls)} stored calls have no cost (recorded before costs were kept)" in more.text()


def test_costs_are_in_the_export_and_the_report(tmp_path: Path) -> None:
    from simlab.report import write_run_report
    from simlab.store import export

    with StubServer(deterministic=True) as server:
        summary = _run(_priced(tmp_path, server))
    out = export(summary.run_dir, tmp_path / "out", "csv")
    costs = (out / "costs.csv").read_text()
    assert costs.splitlines()[0] == "role,arm,calls,prompt_tokens,completion_tokens,cost_usd"
    assert "arm,GEN," in costs and "cost_usd" in (out / "llm_calls.csv").read_text().splitlines()[0]
    html = write_run_report(summary.run_dir).read_text()
    assert "Cost (USD)" in html and f"{summary.cost_usd:.4f}" in html


# ---------------------------------------------------------------- bad input


def _cli(tmp_path: Path, server: StubServer, *args: str, top: str = "") -> int:
    """``python -m simlab.run`` on the quickstart config pointed at the stub: one persona, one domain,
    priced; ``top``: more top-level settings."""
    from tests.test_run_cli import stub_toml

    path = stub_toml(tmp_path, server.base_url, limit="1")
    text = path.read_text()
    path.write_text(f"{top}\n" + text + '\n[pricing.models."smollm2-135m"]\ninput = 100.0\noutput = 300.0\n')
    return main(["--config", str(path), "--quiet", "--no-report", "--domains", "unguided", *args])


@pytest.mark.parametrize(("text", "field"), [
    ('[models."m"]\ninput = -1.0\noutput = 2.0\n', "models.m.input"),
    ('[models."m"]\ninput = "cheap"\noutput = 2.0\n', "models.m.input"),
    ('[endpoints.gpu]\ngpu_hour_usd = -3\n', "endpoints.gpu.gpu_hour_usd"),
    ('[models."m"]\ninput = 1.0\n', "models.m.output"),
])
def test_a_bad_pricing_file_exits_2_naming_file_and_field_before_any_call(tmp_path: Path, capsys, text: str,
                                                                          field: str) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_pricing(prices)
    assert info.value.field == field and info.value.file == str(prices)
    with StubServer() as server:
        assert _cli(tmp_path, server, "--pricing", str(prices)) == 2
        assert server.n_requests == 0
    err = capsys.readouterr().err
    assert str(prices) in err and field in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["--budget", "0"], ["--budget", "-5"], ["--budget", "lots"]])
def test_a_budget_of_no_dollars_exits_2_naming_the_option(tmp_path: Path, capsys, args: list[str]) -> None:
    with StubServer() as server:
        with pytest.raises(SystemExit) as info:
            _cli(tmp_path, server, *args)
        assert info.value.code == 2 and server.n_requests == 0
    assert "--budget" in capsys.readouterr().err


def test_a_budget_of_no_dollars_in_a_config_exits_2_naming_file_and_field(tmp_path: Path, capsys) -> None:
    with StubServer() as server:
        assert _cli(tmp_path, server, top="budget_usd = 0") == 2
        assert server.n_requests == 0
    err = capsys.readouterr().err
    assert "stub.toml" in err and "budget_usd" in err


def test_a_pricing_file_is_applied_over_the_config_and_stored_calls_say_so(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"smollm2-135m": {"input": 1.0, "output": 1.0}}}))
    with StubServer(deterministic=True) as server:
        assert _cli(tmp_path, server, "--pricing", str(prices)) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    calls = read_table(run_dir, "llm_calls")
    assert calls["cost_usd"].sum() == pytest.approx((calls["prompt_tokens"] + calls["completion_tokens"]).sum() / 1e6)


def test_store_records_keep_their_cost_fields() -> None:
    rec = LLMCallRecord(role="arm", model="m", endpoint="e", cost_usd=0.5, cached_tokens=3, price_source="litellm")
    assert rec.cost_usd == 0.5
    with pytest.raises(ValueError):
        LLMCallRecord(role="arm", model="m", endpoint="e", cost_usd=-1.0)


# ---------------------------------------------------------------- estimates before spending


def test_a_dry_run_estimates_calls_tokens_and_dollars_per_component_and_makes_no_call(tmp_path: Path, capsys) -> None:
    with StubServer() as server:
        assert _cli(tmp_path, server, "--dry-run") == 0
        assert server.n_requests == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
    assert {"arm GEN", "arm PROMPT", "arm SUMMARY", "arm STYLE", "simulator", "study"} <= set(lines)
    # one persona × one domain × 1–2 turns: each arm answers 1 to 2 times
    assert "calls 2 (1–2)" in lines["arm GEN"] and "USD $" in lines["study"]
    assert not (tmp_path / "runs").exists()


def test_a_pilot_measures_the_estimate_and_leaves_no_run(tmp_path: Path, capsys) -> None:
    import re

    with StubServer(deterministic=True) as server:
        assert _cli(tmp_path, server, "--dry-run", "--pilot", "1") == 0
        assert server.n_requests > 0
        assert not (tmp_path / "runs").exists()  # the pilot ran in a temporary directory
        estimate = capsys.readouterr().out
        assert "from a pilot of 1 sessions, scaled to 1" in estimate
        assert _cli(tmp_path, server) == 0  # the study itself: one session, the pilot's own
    calls = read_table(next((tmp_path / "runs").iterdir()), "llm_calls")
    for component, rows in (("simulator", calls["role"] == "simulator"),
                            ("arm GEN", (calls["role"] == "arm") & (calls["arm"] == "GEN"))):
        line = next(x for x in estimate.splitlines() if x.strip().startswith(component + ":"))
        expected = float(re.search(r"USD \$([\d.,]+) ", line).group(1).replace(",", ""))  # type: ignore[union-attr]
        assert expected == pytest.approx(calls.loc[rows, "cost_usd"].sum(), abs=1e-4)
        assert f"calls {int(rows.sum())} " in line


def test_the_pilot_estimate_scales_its_sessions_to_the_study() -> None:
    import pandas as pd

    from simlab.estimate import estimate_from_pilot

    calls = pd.DataFrame({
        "recorded_with": ["s1", "s1", "s2", None], "role": ["arm", "simulator", "arm", "summary"],
        "arm": ["A", None, "A", None], "prompt_tokens": [10, 20, 30, 5], "completion_tokens": [1, 2, 3, 4],
        "cost_usd": [0.1, 0.2, 0.3, 0.05], "price_source": ["table", "table", "table", "unpriced"]})
    est = estimate_from_pilot(calls, ["s1", "s2"], n_sessions=10, n_personas=4, n_pilot_personas=2)
    by = {line.component: line for line in est.lines}
    assert by["arm A"].usd == pytest.approx((1.0, 2.0, 3.0))  # 10 × (cheapest, mean, dearest) session
    assert by["simulator"].calls == pytest.approx((0.0, 5.0, 10.0))  # s2 had no simulator call
    assert by["summary"].usd == pytest.approx((0.1, 0.1, 0.1)) and by["summary"].unpriced
    assert est.study.usd == pytest.approx((0.1 + 1.0, 0.1 + 2.0 + 1.0, 0.1 + 3.0 + 2.0))


def test_a_pilot_without_a_dry_run_exits_2(tmp_path: Path, capsys) -> None:
    with StubServer() as server:
        assert _cli(tmp_path, server, "--pilot", "2") == 2
        assert server.n_requests == 0
    assert "--pilot" in capsys.readouterr().err
