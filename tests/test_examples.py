"""The scale recipes in examples/ run as a scheduler would run them, against a stub server:
the SLURM array's tasks and merge job, and the Kubernetes pods' commands with their environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simlab.store import load_run
from simlab.testing import StubServer
from tests.conftest import REPO
from tests.test_run_cli import stub_toml

EXAMPLES = REPO / "examples"


@pytest.fixture
def study(tmp_path):
    with StubServer(deterministic=True) as server:
        yield stub_toml(tmp_path, server.base_url, limit="6", domains='["unguided", "emotional_wellbeing"]')


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JOB_COMPLETION"))}
    # the scripts call `python`: this interpreter's, as in an activated environment (or the image)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _run_all(commands: list[tuple[list[str], dict[str, str]]], cwd: Path) -> None:
    procs = [subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, env in commands]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out


def _check_merged(result: Path, shared: Path, n: int) -> None:
    shards = sorted(shared.glob(f"quickstart-*-shard*of{n}"))
    assert len(shards) == n
    merged = load_run(result)
    assert set(merged.participants["participant_id"]) == {f"sample{i:02d}" for i in range(1, 7)}
    assert len(merged.conversations) == 6 * 2 and len(merged.judgements) == 6 * 2 * 4
    assert (result / "report.html").exists()


def test_slurm_array_tasks_and_merge_job(study, tmp_path):
    shared, result = tmp_path / "shared", tmp_path / "merged"
    tasks = [(["bash", str(EXAMPLES / "slurm" / "prismx-array.sbatch")],
              _env(SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_JOB_ID="77",
                   SLURM_SUBMIT_DIR=str(REPO), CONFIG=str(study), SHARED=str(shared), TMPDIR=str(tmp_path)))
             for i in range(3)]
    _run_all(tasks, cwd=tmp_path)  # sbatch starts tasks in the submit directory; this checks they do not need it
    # a requeued task, on another node, resumes from its shared copy: nothing is run twice
    cmd, env = tasks[1]
    again = subprocess.run(cmd, env={**env, "TMPDIR": str(tmp_path / "node2")}, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "of 8 planned (8 were already done)" in again.stdout, again.stdout
    _run_all([(["bash", str(EXAMPLES / "slurm" / "merge.sbatch")],
               _env(SLURM_JOB_ID="78", SLURM_SUBMIT_DIR=str(REPO), SHARED=str(shared), RESULT=str(result),
                    TMPDIR=str(tmp_path)))], cwd=tmp_path)
    _check_merged(result, shared, 3)


def test_kubernetes_indexed_job_pods_and_merge_job(study, tmp_path):
    shards_job = yaml.safe_load((EXAMPLES / "kubernetes" / "prismx-shards.yaml").read_text())
    merge_job = yaml.safe_load((EXAMPLES / "kubernetes" / "prismx-merge.yaml").read_text())
    spec = shards_job["spec"]
    assert spec["completionMode"] == "Indexed"
    n = spec["completions"]

    def pod(job: dict, **extra: str) -> tuple[list[str], dict[str, str]]:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        # the volumes of the pod, as folders here; the config map holds the study's config
        for key, value in env.items():
            env[key] = value.replace("/results", str(tmp_path / "pvc")).replace("/scratch", str(tmp_path / "node"))
        env["CONFIG"] = str(study)
        assert container["workingDir"] == "/app"  # the repository, as in the image
        return container["command"], _env(**env, **extra)

    # 16 pods is the recipe; 4 of them run here, each on its own "node" (shard 0 holds none of the
    # six sample participants: an empty shard is a valid shard)
    picked = [0, 4, 9, 15]
    _run_all([(cmd, {**env, "LOCAL": f"{env['LOCAL']}-{i}"})
              for i in picked for cmd, env in [pod(shards_job, JOB_COMPLETION_INDEX=str(i))]], cwd=REPO)
    shards = sorted((tmp_path / "pvc" / "shards").glob(f"quickstart-*-shard*of{n}"))
    assert sorted(int(p.name.split("-shard")[1].split("of")[0]) for p in shards) == picked
    cmd, env = pod(merge_job)
    _run_all([(cmd, env)], cwd=REPO)
    merged = load_run(tmp_path / "pvc" / "merged")
    ran = set().union(*(set(load_run(p).participants["participant_id"]) for p in shards))
    assert set(merged.participants["participant_id"]) == ran
    assert (tmp_path / "pvc" / "merged" / "report.html").exists()
