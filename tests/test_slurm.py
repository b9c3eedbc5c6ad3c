"""examples/slurm under a real SLURM scheduler: the shard array submitted with sbatch against a
stub server, one task requeued while it runs, then the merge job after the array; the merged store
holds what one process running the same config stores.

Needs a SLURM cluster this user can submit to (as root, ``.ci/slurm-up`` starts a single-node one on
127.0.0.1). Without one the test skips, saying why; ``SIMLAB_REQUIRE_SLURM=1`` (CI) makes that a
failure.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from simlab.store import load_run
from simlab.testing import StubServer
from tests.conftest import REPO
from tests.test_examples import EXAMPLES, _env
from tests.test_run_cli import stub_toml

SHARDS = 4        # the recipe's array is 16 tasks; 4 on the command line keep the test short
PARTICIPANTS = 6  # the study's limit: 6 participants × 2 domains = 12 sessions
WAIT_S = 480      # the whole scheduler run: 112-116 s on 2 cores shared with a load of 11-13


def _cluster_problem() -> str | None:
    """Why no SLURM cluster can take the test's jobs here, or None when one can."""
    start = "as root, `.ci/slurm-up` installs and starts a single-node cluster on 127.0.0.1"
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return f"SLURM is not installed (no sbatch/sinfo on PATH): {start}"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 20 s (is slurmctld up?): {start}"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        return f"no SLURM controller answers (sinfo: {last}): {start}"
    states = out.stdout.split()
    if not {"idle", "mixed"} & set(states):
        return f"no SLURM node can take jobs (sinfo's node states: {', '.join(states) or 'none'}): {start}"
    return None


def _require_cluster() -> None:
    """Skip saying why no cluster can take the jobs, or fail where one is required (CI)."""
    problem = _cluster_problem()
    if problem is None:
        return
    if os.environ.get("SIMLAB_REQUIRE_SLURM") == "1":  # CI started the cluster: a missing one is a failure
        pytest.fail(f"SIMLAB_REQUIRE_SLURM=1 but {problem}")
    pytest.skip(problem)


@pytest.fixture
def cluster() -> None:
    _require_cluster()


def _content(run_dir: Path) -> dict[str, list[tuple[str, ...]]]:
    """Every table's rows, as sorted strings, without what differs between equal runs: a call's
    latency, and the persona-summary calls (a summary is cached across runs and attempts, so whether
    a run made the call depends on the cache, not on the sessions)."""
    tables = load_run(run_dir)
    out = {}
    for name in ("participants", "conversations", "turns", "judgements", "bdm", "autograde", "llm_calls", "arms",
                 "answers"):
        frame: pd.DataFrame = getattr(tables, name)
        if name == "llm_calls":
            frame = frame[frame["role"] != "summary"].drop(columns=["latency_s"])
        out[name] = sorted(tuple(row) for row in frame.astype(str).itertuples(index=False))
    return out


def _squeue(*job_ids: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True, text=True,
                         timeout=20)
    return out.stdout.split("\n") if out.returncode == 0 and out.stdout.strip() else []


def _jobs(job_id: str) -> dict[str, dict[str, str]]:
    """The controller's record of a job (an array: one entry per task, by ``<job>_<task>``)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=20)
    jobs = {}
    for line in out.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        task = fields.get("ArrayTaskId")
        jobs[f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]] = fields
    return jobs


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(folder.glob("*.log")))


def _sessions_stored(store: Path) -> int:
    """Completed sessions in a store being written (0 while it is not there yet)."""
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])
    except sqlite3.Error:  # created but its tables not yet
        return 0


@pytest.mark.slurm
def test_examples_slurm_array_with_a_requeued_task_then_merge_equals_one_process(cluster, tmp_path):
    from simlab.personas import load_persona_set
    from simlab.run import select

    people = load_persona_set(REPO / "personas" / "sample.jsonl")
    sizes = [len(select(people, limit=PARTICIPANTS, shard=(i, SHARDS))) for i in range(SHARDS)]
    target = max(range(SHARDS), key=lambda i: sizes[i])  # requeued mid-run: the shard with the most sessions
    assert sizes[target] >= 2, sizes
    shared, result, node, work = tmp_path / "shared", tmp_path / "merged", tmp_path / "node", tmp_path / "work"
    for folder in (node, work):
        folder.mkdir()
    started = time.monotonic()
    jobs: list[str] = []
    with StubServer(deterministic=True) as server:
        # two sessions at a time, so the requeued task has some stored and some not when it is stopped
        study = stub_toml(tmp_path, server.base_url, limit=str(PARTICIPANTS), concurrency="2")
        # As the recipe's header says, from the repository's folder (the scripts find shard.sh by
        # SLURM_SUBMIT_DIR); the jobs themselves run and log in tmp_path (--chdir).
        env = _env(CONFIG=str(study), SHARED=str(shared), RESULT=str(result), TMPDIR=str(node))
        sbatch = ["sbatch", "--parsable", f"--chdir={tmp_path}", "--export=ALL"]
        array = subprocess.run([*sbatch, f"--array=0-{SHARDS - 1}", str(EXAMPLES / "slurm" / "prismx-array.sbatch")],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert array.returncode == 0, array.stderr
        job = array.stdout.strip().split(";")[0]
        jobs.append(job)
        merge = subprocess.run([*sbatch, f"--dependency=afterany:{job}", str(EXAMPLES / "slurm" / "merge.sbatch")],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert merge.returncode == 0, merge.stderr
        merge_job = merge.stdout.strip().split(";")[0]
        jobs.append(merge_job)
        try:
            # the target task, once it runs, gets slow replies; requeued after its first stored session
            task = f"{job}_{target}"
            store_glob = f"prismx-{job}-{target}/quickstart-*-shard{target}of{SHARDS}/store.sqlite"
            stored = 0
            while time.monotonic() - started < WAIT_S:
                running = f"{task} RUNNING" in _squeue(job)
                if running:
                    server.delay = 0.2
                stores = list(node.glob(store_glob))
                stored = _sessions_stored(stores[0]) if stores else 0
                if stored:
                    break
                assert _squeue(job), f"the array ended before task {target} was requeued\n{_logs(tmp_path)}"
                time.sleep(0.1)
            assert 0 < stored < sizes[target] * 2, (stored, _logs(tmp_path))
            requeue = subprocess.run(["scontrol", "requeue", task], capture_output=True, text=True, timeout=20)
            assert requeue.returncode == 0, requeue.stderr
            # SLURM holds a requeued job back for 120 s before it may start again; the test lets it
            # start at once (what an operator's `scontrol update` does), the rest is the scheduler's.
            # The requeue is done once the task's processes are ended and it is pending again.
            while time.monotonic() - started < WAIT_S:
                fields = _jobs(task).get(task, {})
                if fields.get("JobState") == "PENDING" and fields.get("Restarts") == "1":
                    break
                time.sleep(0.2)
            release = subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], capture_output=True,
                                     text=True, timeout=20)
            assert release.returncode == 0, release.stderr
            server.delay = 0.0
            # the one-process run of the same study, on the core the scheduler leaves free (each task
            # asks for 2 CPUs of a 2-CPU node and its Python uses one)
            one = subprocess.Popen([sys.executable, "-m", "simlab.run", "--config", str(study), "--out",
                                    str(tmp_path / "single"), "--no-report", "--quiet"], cwd=work, env=_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            one_out, _ = one.communicate(timeout=WAIT_S)
            assert one.returncode == 0, one_out
            while _squeue(job, merge_job) and time.monotonic() - started < WAIT_S:
                time.sleep(0.5)
            assert not _squeue(job, merge_job), f"jobs still queued after {WAIT_S} s\n{_logs(tmp_path)}"
        finally:
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=20)
    wall = time.monotonic() - started

    records = _jobs(job)
    logs = _logs(tmp_path)
    assert sorted(records) == [f"{job}_{i}" for i in range(SHARDS)], (records, logs)
    for name, fields in records.items():
        assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), (name, fields, logs)
        assert fields["Restarts"] == ("1" if name == task else "0"), (name, fields)
    assert (_jobs(merge_job)[merge_job]["JobState"], _jobs(merge_job)[merge_job]["ExitCode"]) == ("COMPLETED", "0:0")
    # the requeued task resumed from what its first run stored, on the same node's disk
    again = re.findall(r"of (\d+) planned \((\d+) were already done\)",
                       (tmp_path / f"prismx-{job}_{target}.log").read_text())
    assert again and int(again[-1][1]) >= stored, logs
    assert f"merged run: {result}" in (tmp_path / f"prismx-merge-{merge_job}.log").read_text(), logs
    assert (result / "report.html").exists()

    (single,) = (tmp_path / "single").glob("quickstart-*")
    expected = _content(single)
    assert len(expected["conversations"]) == PARTICIPANTS * 2 and len(expected["judgements"]) == PARTICIPANTS * 2 * 4
    merged = _content(result)
    for name, rows in expected.items():
        assert merged[name] == rows, name
    print(f"SLURM array of {SHARDS} + requeue + merge: {wall:.1f} s")


def test_without_slurm_the_test_skips_saying_how_to_start_one_and_ci_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    monkeypatch.delenv("SIMLAB_REQUIRE_SLURM", raising=False)
    how = "as root, `.ci/slurm-up` installs and starts a single-node cluster on 127.0.0.1"
    with pytest.raises(pytest.skip.Exception, match="^SLURM is not installed") as skipped:
        _require_cluster()
    assert f"SLURM is not installed (no sbatch/sinfo on PATH): {how}" == str(skipped.value)
    monkeypatch.setenv("SIMLAB_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        _require_cluster()
    assert f"SIMLAB_REQUIRE_SLURM=1 but SLURM is not installed (no sbatch/sinfo on PATH): {how}" == str(failed.value)


def test_the_cluster_script_refuses_an_unknown_mode():
    out = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up"), "restart"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    if os.geteuid() == 0:
        assert "unknown mode 'restart': use 'start' (the default) or 'stop'" in out.stderr
    else:
        assert "must run as root" in out.stderr and "sudo" in out.stderr
