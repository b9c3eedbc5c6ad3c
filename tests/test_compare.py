"""``simlab compare``: loading runs and ``--sim`` data as sources, every bad input (exit 2, nothing
written), the printed table; the end-to-end tests need ``simlab.fidelity.fidelity_index`` (importorskip)."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from simlab.cli import main as simlab_main
from simlab.compare import format_leaderboard, load_sources, main, parse_sim
from simlab.errors import InputError
from simlab.fidelity import write_tables
from simlab.fidelity.leaderboard_result import HumanSplit, Leaderboard, LeaderboardRow, PairwiseTest
from simlab.fidelity.status import Estimate
from simlab.fidelity.synthetic import make_synthetic
from simlab.tables import Tables
from simlab.testing import StubServer

N = 12  # the sample personas: a run's participants, at least the leaderboard's minimum per source
N_DATA = 24  # participants of the synthetic data: enough for two halves of the humans
DOMAINS = ("unguided", "emotional_wellbeing")  # the quickstart run's


def synthetic(sources: tuple[str, ...] = ("human", "simA", "simB"), seed: int = 3) -> Tables:
    """Synthetic data whose first ``N`` participants are the sample personas (so a run's sessions pair
    with them)."""
    tables = make_synthetic(N_DATA, sources=sources, domains=DOMAINS, seed=seed)
    ids = {f"p{i:04d}": f"sample{i + 1:02d}" for i in range(N)}
    return replace(tables, **{name: frame.assign(participant_id=frame["participant_id"].replace(ids))
                              for name, frame in tables.items() if "participant_id" in frame.columns})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Human data and two simulated sources in the human-data format (synthetic, ``N`` participants), a
    real stub-server run (source ``sim_dynamic``) whose config names the human data, and its export."""
    from simlab.config import default_config, parse_config
    from simlab.run import run_experiment
    from simlab.store import export

    tmp = tmp_path_factory.mktemp("compare")
    synthetic_ = synthetic()
    out = {name: write_tables(synthetic_.for_source(name), tmp / name) for name in ("human", "simA", "simB")}
    out["human_copy"] = write_tables(synthetic_.for_source("human"), tmp / "human_copy")
    # the same simulated data without a source column: it takes the --sim NAME
    no_source = synthetic_.for_source("simB")
    out["nameless"] = tmp / "nameless"
    write_tables(Tables(judgements=no_source.judgements.drop(columns=["source"]),
                        conversations=no_source.conversations.drop(columns=["source"])), out["nameless"])
    with StubServer(deterministic=True) as srv:
        d = default_config().public_dict()
        d["endpoints"] = {"local": {"kind": "vllm", "base_url": srv.base_url}}
        d["out_dir"] = str(tmp / "runs")
        d["limit"] = N
        d["protocol"]["domains"] = list(DOMAINS)
        d["human"] = str(out["human"])
        summary = asyncio.run(run_experiment(parse_config(d), progress=False, report=False))
        d.pop("human")
        d["limit"] = 2
        d["out_dir"] = str(tmp / "runs-unpaired")
        bare = asyncio.run(run_experiment(parse_config(d), progress=False, report=False))
    out["run"] = Path(summary.run_dir)
    out["bare_run"] = Path(bare.run_dir)
    out["run_copy"] = tmp / "run-copy"
    shutil.copytree(out["run"], out["run_copy"])
    out["export"] = export(out["run"], tmp / "export")
    out["mixed"] = write_tables(Tables(
        judgements=synthetic_.judgements[synthetic_.judgements["source"] != "human"],
        conversations=synthetic_.conversations[synthetic_.conversations["source"] != "human"]), tmp / "mixed")
    out["empty_dir"] = tmp / "not-a-run"
    out["empty_dir"].mkdir()
    return out


def test_runs_and_sims_are_sources_beside_the_human_data(data):
    tables = load_sources(runs=[data["run"]], sims={"a": data["simA"], "nameless": data["nameless"]})
    assert tables.sources == ["a", "human", "nameless", "sim_dynamic"]  # --human taken from the run's config
    conv = tables.conversations
    assert set(conv.loc[conv["source"] == "a", "conversation_id"]) == \
        set(synthetic().for_source("simA").conversations["conversation_id"])
    assert (tables.judgements["source"] == "nameless").sum() == N_DATA * len(DOMAINS) * 4  # × arms
    with_human = load_sources(human=data["human"], runs=[data["bare_run"]])
    assert with_human.sources == ["human", "sim_dynamic"]


def test_parse_sim():
    assert parse_sim("gpt-4o=a/b=c") == ("gpt-4o", Path("a/b=c"))
    for bad in ("noequals", "=path", "name=", "human=x", "Humans=x", "a b=x", "-x=y"):
        with pytest.raises(InputError) as err:
            parse_sim(bad)
        assert err.value.field == "--sim", bad


# each case: the arguments (placeholders are data keys), and what the message must name
BAD = [
    ("sim path missing", ["--human", "{human}", "--sim", "x={nope}"], ["--sim", "nope", "no such file"]),
    ("sim not loadable", ["--human", "{human}", "--sim", "x={empty_dir}"], ["not-a-run", "judgements"]),
    ("sim says human", ["--human", "{human}", "--sim", "x={human}"], ["--sim x", "is the --human data"]),
    ("sim rows say human", ["--human", "{human}", "--sim", "x={human_copy}"], ["human_copy", "source 'human'"]),
    ("sim is a run", ["--human", "{human}", "--sim", "x={bare_run}"], ["--sim x", "is a run directory"]),
    ("sim holds several sources", ["--human", "{human}", "--sim", "x={mixed}"], ["several sources", "simA, simB"]),
    ("sim name invalid", ["--human", "{human}", "--sim", "a b={simA}"], ["--sim", "'a b' is not a source name"]),
    ("sim name human", ["--human", "{human}", "--sim", "human={simA}"], ["--sim", "'human' cannot name"]),
    ("sim name humans", ["--human", "{human}", "--sim", "humans={simA}"], ["--sim", "'humans' cannot name"]),
    ("sim not NAME=PATH", ["--human", "{human}", "--sim", "{simA}"], ["--sim", "is not NAME=PATH"]),
    ("two sims one name", ["--human", "{human}", "--sim", "a={simA}", "--sim", "a={simB}"],
     ["two --sim named 'a'"]),
    ("sim name is a run's source", ["{run}", "--sim", "sim_dynamic={simA}"],
     ["two sources named 'sim_dynamic'", "run", "--sim sim_dynamic"]),
    ("two runs one source", ["{run}", "{run_copy}"], ["two sources named 'sim_dynamic'", "run-copy"]),
    ("shared conversation ids", ["{run}", "--sim", "copy={export}"], ["conversation", "is in both run", "--sim copy"]),
    ("not a run directory", ["--human", "{human}", "{empty_dir}"], ["not-a-run", "not a run directory", "RUN"]),
    ("run missing", ["--human", "{human}", "{nope}"], ["nope", "not a run directory"]),
    ("run without human data", ["{bare_run}"], ["no human data", "--human", "names none"]),
    ("no simulated source", ["--human", "{human}"], ["no simulated source"]),
    ("human missing", ["--human", "{nope}", "{run}"], ["nope", "no such file", "--human"]),
    ("human data not human", ["--human", "{simA}", "{bare_run}"], ["simA", "expected only 'human'"]),
    ("negative n-boot", ["{run}", "--n-boot", "-1"], ["--n-boot", ">= 0"]),
]


@pytest.mark.parametrize("args, named", [pytest.param(a, n, id=i) for i, a, n in BAD])
def test_bad_input_exits_2_naming_it_and_writes_nothing(data, tmp_path, capsys, args, named):
    paths = {**{k: str(v) for k, v in data.items()}, "nope": str(tmp_path / "nope")}
    out, report = tmp_path / "lb.json", tmp_path / "lb.html"
    argv = [a.format(**paths) for a in args] + ["--out", str(out), "--report", str(report)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    for word in named:
        assert word in err, (word, err)
    assert "Traceback" not in err
    assert not out.exists() and not report.exists() and list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_directory_is_refused_before_loading(data, tmp_path, capsys):
    assert simlab_main(["compare", str(data["run"]), "--out", str(tmp_path)]) == 2
    assert "--out takes a file name" in capsys.readouterr().err


def _est(v: float, lo: float, hi: float) -> Estimate:
    return Estimate(value=v, ci_low=lo, ci_high=hi, n=10)


def test_the_printed_table_lists_each_source_its_index_and_the_verdicts():
    lb = Leaderboard(n_boot=100, seed=0, correction="Holm across the pairs", human_split=HumanSplit(seed=0, n_participants=(5, 5)),
                     leaderboard=[
                         LeaderboardRow(source="humans", kind="humans", n_participants=10, index=_est(100, 91.5, 108)),
                         LeaderboardRow(source="sim_dynamic:profile", kind="simulated", n_participants=10,
                                        index=_est(71.25, 64, 78.2)),
                         LeaderboardRow(source="sim_dynamic:none", kind="simulated", n_participants=10,
                                        index=_est(40, 30, 50)),
                         LeaderboardRow(source="x", kind="simulated", n_participants=10, index=_est(math.nan, math.nan, math.nan)),
                     ],
                     pairwise=[PairwiseTest(a="sim_dynamic:profile", b="sim_dynamic:none", measure="index",
                                            difference=_est(31.25, 20, 40), p_adjusted=0.004, closer="sim_dynamic:profile"),
                               PairwiseTest(a="sim_dynamic:none", b="x", measure="index", difference=_est(1, -5, 5),
                                            p_adjusted=0.9),
                               PairwiseTest(a="sim_dynamic:profile", b="sim_dynamic:none", measure="hierarchy",
                                            difference=_est(1, -5, 5), p_adjusted=0.9)])
    lines = format_leaderboard(lb).splitlines()
    assert lines[0].split() == ["source", "index", "95%", "CI", "participants"]
    assert lines[1].split()[:5] == ["humans", "100.0", "[91.5,", "108.0]", "10"] and "ceiling" in lines[1]
    assert lines[2].split() == ["sim_dynamic:profile", "71.2", "[64.0,", "78.2]", "10"]
    assert lines[4].split() == ["x", "–", "[–,", "–]", "10"]
    assert lines[5] == ("pairwise on the index (Holm across the pairs): sim_dynamic:profile closer than "
                        "sim_dynamic:none (adjusted p 0.004); 1 other pair(s) not different at 5%")
    assert len(lines) == 6  # component tests are in the JSON and the report, not the terminal


# ------------------------------------------------------------------------- end to end (the leaderboard)


def _compare_argv(data: dict[str, Path], out: Path, report: Path, *more: str) -> list[str]:
    return ["compare", str(data["run"]), "--sim", f"a={data['simA']}", "--sim", f"b={data['simB']}",
            "--n-boot", "20", "--out", str(out), "--report", str(report), *more]


def test_compare_writes_the_json_and_the_report(data, tmp_path, capsys):
    pytest.importorskip("simlab.fidelity.fidelity_index")
    out, report = tmp_path / "lb.json", tmp_path / "lb.html"
    assert simlab_main(_compare_argv(data, out, report, "--no-details")) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    rows = doc["leaderboard"]
    assert {r["source"] for r in rows} == {"humans", "sim_dynamic", "a", "b"}  # --human from the run's config
    for r in rows:
        assert set(r["index"]) >= {"value", "ci_low", "ci_high"} and isinstance(r["components"], dict)
        assert r["source"] in printed
    values = [r["index"]["value"] for r in rows if r["index"]["value"] is not None]
    assert values == sorted(values, reverse=True)
    assert doc["details"] is None and doc["n_boot"] == 20
    html = report.read_text()
    assert all(f'id="source-{s}"' in html for s in ("humans", "sim_dynamic", "a", "b"))
    assert f"wrote {out}" in printed and f"wrote {report}" in printed


@pytest.mark.slow  # every fidelity analysis per source (about 20 s)
def test_compare_with_details_puts_each_sources_comparisons_in_the_json_and_the_report(data, tmp_path, capsys):
    pytest.importorskip("simlab.fidelity.fidelity_index")
    out, report = tmp_path / "lb.json", tmp_path / "lb.html"
    assert simlab_main(_compare_argv(data, out, report)) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["details"] is not None
    simulated = [r for r in doc["leaderboard"] if r["kind"] == "simulated"]
    assert simulated and all(r["comparisons"] for r in simulated)
    key = next(iter(simulated[0]["comparisons"]))
    assert key in report.read_text()  # each source's comparisons, as a table


def test_the_python_api_gives_the_leaderboard(data):
    pytest.importorskip("simlab.fidelity.fidelity_index")
    from simlab.compare import compare_simulators

    lb = compare_simulators(human=data["human"], sims={"a": data["simA"], "b": data["simB"]}, n_boot=10,
                            details=False)
    assert {r.source for r in lb.leaderboard} == {"humans", "a", "b"}
    assert lb.details is None and lb.n_boot == 10


@pytest.mark.slow  # the documented commands and example, each over every analysis (about 40 s)
def test_the_documented_compare_commands_and_example_run(data, tmp_path, monkeypatch):
    """docs/fidelity.md's "Comparing simulators" as written, in a workspace laid out as it assumes
    (tests/test_docs_commands.py's workspace has too few participants for a leaderboard)."""
    pytest.importorskip("simlab.fidelity.fidelity_index")
    import re
    import shlex

    from tests.conftest import REPO
    from tests.test_docs_commands import commands

    text = (REPO / "docs" / "fidelity.md").read_text(encoding="utf-8")
    section = text.split("## Comparing simulators\n", 1)[1].split("\n## ", 1)[0]
    (tmp_path / "data").mkdir()
    shutil.copytree(data["human"], tmp_path / "data" / "prism")
    shutil.copytree(data["run"], tmp_path / "runs" / "demo")
    shutil.copytree(data["export"], tmp_path / "exported_run")
    doc = tmp_path / "section.md"
    doc.write_text(section)
    lines = commands(doc)
    assert len(lines) == 2 and all(line.startswith("simlab compare ") for line in lines)
    monkeypatch.chdir(tmp_path)
    for line in lines:
        assert simlab_main(shlex.split(line)[1:]) == 0, line
    assert json.loads((tmp_path / "leaderboard.json").read_text())["leaderboard"]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (tmp_path / "leaderboard.json").unlink()
    exec(compile(example, "docs/fidelity.md", "exec"), {})
    doc_json = json.loads((tmp_path / "leaderboard.json").read_text())
    assert {r["source"] for r in doc_json["leaderboard"]} == {"humans", "sim_dynamic"}
    assert 'id="source-sim_dynamic"' in (tmp_path / "leaderboard.html").read_text()
