"""A fidelity analysis added from outside simlab (``tests/extensions/analyses_ext.py``), registered
from Python and by a package entry point: it runs in ``analyze_all``, its result survives the JSON
round trip, its section is in the report (escaped); a failing one is recorded as failed; bad
registrations are refused with the name and the cause, and the CLIs exit 2 on them before any work."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from simlab.fidelity import analyze_all
from simlab.fidelity.registry import ANALYSES, Analysis, AnalysisContext, ReportSection
from simlab.fidelity.result import FidelityResult, SourceStatus
from simlab.fidelity.synthetic import make_synthetic
from simlab.registry import RegistrationError
from simlab.report.html import render_html
from simlab.tables import Tables
from tests.conftest import REPO, installed_package
from tests.extensions.analyses_ext import NAME, TURN_RATING_GAP, TurnRatingGap

ARMS = ("GEN", "<b>PROMPT</b>")  # an arm name with markup: the report must escape it
SHIFT = 8.0  # planted: the simulator rates GEN's replies 8 points higher than people do


@pytest.fixture(scope="module")
def tables() -> Tables:
    t = make_synthetic(30, seed=1, arms=ARMS)
    assert t.turns is not None and t.conversations is not None
    source = t.turns["conversation_id"].map(t.conversations.set_index("conversation_id")["source"])
    turns = t.turns.copy()
    turns.loc[(source == "sim_dynamic") & (turns["arm"] == "GEN"), "turn_rating"] += SHIFT
    return dataclasses.replace(t, turns=turns)


@pytest.fixture()
def registered() -> Iterator[Analysis]:
    ANALYSES.register(TURN_RATING_GAP)
    try:
        yield TURN_RATING_GAP
    finally:
        ANALYSES.unregister(NAME)


def _check_result(result: FidelityResult) -> None:
    gap = result.analyses[NAME]
    assert isinstance(gap, TurnRatingGap) and gap.status == "ok"
    gen, prompt = gap.vs_human["sim_dynamic"]["GEN"], gap.vs_human["sim_dynamic"]["<b>PROMPT</b>"]
    assert gen.ci_low < SHIFT < gen.ci_high and gen.ci_low > 0 and gen.n == 30
    assert prompt.ci_low < 0 < prompt.ci_high  # nothing planted there
    assert gap.mean["sim_dynamic"]["GEN"] - gap.mean["human"]["GEN"] == pytest.approx(gen.value)
    for name in ("hierarchy", "agreement", "position", "dynamics", "traits", "gen_errors"):
        assert result.analyses[name].status == "ok", name  # the built-ins still run beside it
    again = FidelityResult.model_validate_json(result.model_dump_json())
    assert isinstance(again.analyses[NAME], TurnRatingGap) and again == result
    assert json.loads(result.model_dump_json())["analyses"][NAME]["vs_human"]["sim_dynamic"]["GEN"]["n"] == 30


def test_registered_from_python_in_the_json_and_the_report(tables: Tables, registered: Analysis) -> None:
    assert ANALYSES.names()[-1] == NAME  # after the built-ins
    result = analyze_all(tables, n_boot=50, topics=None)
    _check_result(result)
    html = render_html(FidelityResult.model_validate_json(result.model_dump_json()))
    section = html[html.index(f'id="{NAME}"'):]
    assert "<h2>8. Turn ratings per arm</h2>" in section and "The largest gap: sim_dynamic rates GEN 8" in section
    assert "mean turn rating, &lt;b&gt;PROMPT&lt;/b&gt;" in section and "<b>PROMPT</b>" not in html


def test_a_result_whose_analysis_is_not_registered_still_loads_and_renders(tables: Tables,
                                                                           registered: Analysis) -> None:
    written = analyze_all(tables, n_boot=5, topics=None).model_dump_json()
    ANALYSES.unregister(NAME)  # e.g. the package that added it is not installed where the JSON is read
    result = FidelityResult.model_validate_json(written)
    assert result.analyses[NAME].status == "ok" and json.loads(result.model_dump_json()) == json.loads(written)
    assert "Computed; see the result JSON." in render_html(result)


def test_old_result_json_loads_and_renders() -> None:
    """A result JSON written before analyses were registered (by the code of that time)."""
    raw = (REPO / "tests" / "fidelity" / "data" / "result_before_registry.json").read_text()
    result = FidelityResult.model_validate_json(raw)
    assert json.loads(result.model_dump_json()) == json.loads(raw)
    assert type(result.analyses["hierarchy"]).__name__ == "HierarchyResult"
    html = render_html(result)
    for title in ("1. Aggregate hierarchy", "3. Topic divergence", "6. Text-level trait biases", "Generation errors"):
        assert title in html


def _dist(where: Path, entry: str) -> None:
    """A package's metadata with one ``simlab.analyses`` entry point (what pip would install)."""
    installed_package(where, "simlab-ext-analyses", "simlab.analyses", [entry])


def test_registered_by_an_entry_point(tables: Tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist(tmp_path, f"{NAME} = tests.extensions.analyses_ext:TURN_RATING_GAP")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        ANALYSES.reload_entry_points()
        assert NAME in ANALYSES
        _check_result(analyze_all(tables, n_boot=50, topics=None))
    finally:
        ANALYSES.unregister(NAME)


def _boom(tables: Tables, context: AnalysisContext) -> SourceStatus:
    raise RuntimeError("no <script>alert(1)</script> here")


def test_a_failing_analysis_is_recorded_as_failed_and_the_others_run(tables: Tables) -> None:
    broken = dataclasses.replace(TURN_RATING_GAP, name="broken_gap", run=_boom)
    ANALYSES.register(broken)
    try:
        result = analyze_all(tables, n_boot=5, topics=None)
    finally:
        ANALYSES.unregister("broken_gap")
    failed = result.analyses["broken_gap"]
    assert isinstance(failed, TurnRatingGap) and failed.status == "failed"
    assert "RuntimeError" in (failed.reason or "") and "no <script>" in (failed.reason or "")
    assert result.analyses["hierarchy"].status == "ok" and result.analyses["dynamics"].status == "ok"
    ANALYSES.register(broken)
    try:
        html = render_html(result)
    finally:
        ANALYSES.unregister("broken_gap")
    assert "no &lt;script&gt;alert(1)&lt;/script&gt; here" in html and "<script>" not in html


class NotPydantic:
    status = "ok"
    reason = None


class Handle:
    """Not JSON-serialisable."""


class WithHandle(SourceStatus):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    handle: Handle | None = None


class Required(SourceStatus):
    value: float  # no default: a failure could not be recorded


class NoStatus(BaseModel):
    value: float = 0.0


@pytest.mark.parametrize(("change", "cause"), [
    ({"name": "hierarchy"}, "analysis 'hierarchy': registered twice"),
    ({"result": NotPydantic}, "result model .*NotPydantic.* is not a pydantic model"),
    ({"result": NoStatus}, "result model NoStatus does not derive from .*SourceStatus"),
    ({"result": WithHandle}, "result model WithHandle is not JSON-serialisable"),
    ({"result": Required}, "result model Required cannot record a failure"),
    ({"run": None}, r"function \(run\) is not callable"),
    ({"section": ReportSection("", "?", print)}, "report section has no title"),
])
def test_bad_registrations_are_refused_with_the_name_and_cause(change: dict[str, object], cause: str) -> None:
    bad = dataclasses.replace(TURN_RATING_GAP, **{"name": "bad_one", **change})  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match=cause if "hierarchy" in cause else f"analysis 'bad_one': {cause}"):
        ANALYSES.register(bad)
    assert "bad_one" not in ANALYSES


def _bad_analysis_package(where: Path) -> dict[str, str]:
    """A package whose entry point registers a second 'hierarchy'; the environment that sees it."""
    _dist(where, "bad = simlab_ext_bad_analysis:BAD")
    (where / "simlab_ext_bad_analysis.py").write_text(
        "import dataclasses\n"
        "from tests.extensions.analyses_ext import TURN_RATING_GAP\n"
        "BAD = dataclasses.replace(TURN_RATING_GAP, name='hierarchy')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(where), str(REPO)])}


@pytest.mark.parametrize("command", [
    ["simlab.fidelity", "analyze", "--human", "no/such/dir", "--out", "x.json"],
    ["simlab.report", "--run", "no/such/run"],
])
def test_the_clis_exit_2_on_a_bad_analysis_before_any_work(tmp_path: Path, command: list[str]) -> None:
    env = _bad_analysis_package(tmp_path)
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "analysis 'hierarchy': registered twice" in done.stderr and "no/such" not in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_a_run_refuses_a_bad_analysis_before_any_model_call(tmp_path: Path) -> None:
    # the report is written at the end of a run: the analyses are read at its start all the same
    from simlab.testing import StubServer
    from tests.test_run_cli import stub_toml

    env = _bad_analysis_package(tmp_path)
    with StubServer() as server:
        config = stub_toml(tmp_path, server.base_url)
        done = subprocess.run([sys.executable, "-m", "simlab.run", "--config", str(config), "--limit", "1"],
                              cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
        assert server.n_requests == 0, done.stderr
    assert done.returncode == 2, done.stderr
    assert "analysis 'hierarchy': registered twice" in done.stderr
    assert not list((tmp_path / "runs").glob("*/store.sqlite"))


def test_its_calibration_cases_are_in_all_cases_and_run(registered: Analysis) -> None:
    from simlab.fidelity.calibration import all_cases, run_case

    [case] = all_cases([NAME])
    assert case.analysis == NAME and case in all_cases()
    c = run_case(case, 4)
    assert c.null_reported == c.effect_reported == 4 and c.effect_significant == 4


def test_the_calibration_script_runs_an_entry_points_cases(tmp_path: Path) -> None:
    _dist(tmp_path, f"{NAME} = tests.extensions.analyses_ext:TURN_RATING_GAP")
    out = tmp_path / "calibration.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "calibration.py"), "--reps", "2", "--analysis",
                           NAME, "--jobs", "1", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"| {NAME} | mean turn rating of GEN, sim − human | 2 |" in out.read_text()
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "calibration.py"), "--analysis", "no_such",
                          "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "no calibration cases for no_such" in bad.stderr
