"""The comparison report of a hand-built ``Leaderboard``: hostile source names stay text, each source
has its anchor, nothing is fetched from a network, and it loads in Chromium without errors."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _payloads import PAYLOADS
from test_report_browser import _load, browser  # noqa: F401 - the Chromium fixture

from simlab.fidelity.leaderboard_result import (
    Component,
    ComponentInfo,
    HumanSplit,
    Leaderboard,
    LeaderboardRow,
    PairwiseTest,
)
from simlab.fidelity.status import Estimate
from simlab.report import charts
from simlab.report.leaderboard import leaderboard_context, render_leaderboard_html, source_slugs, write_leaderboard_html

EVIL = PAYLOADS["script"] + PAYLOADS["img"] + " $x$ "
NAN = math.nan


def _est(v: float, lo: float, hi: float, p: float | None = None) -> Estimate:
    return Estimate(value=v, ci_low=lo, ci_high=hi, n=20, p_value=p)


def _comp(score: float, distance: float) -> Component:
    return Component(score=_est(score, score - 8, score + 8), distance=_est(distance, distance / 2, distance * 2))


def hostile_leaderboard(n_variants: int = 2) -> Leaderboard:
    """The humans row, a hostile source name, a source with a missing component, ``n_variants`` more."""
    rows = [LeaderboardRow(source="humans", kind="humans", n_participants=20, index=_est(100, 93, 107),
                           components={"hierarchy": _comp(100, 0.0), "position": _comp(100, 0.0)})]
    rows.append(LeaderboardRow(source=EVIL, kind="simulated", n_participants=20, index=_est(72.5, 65, 80),
                               components={"hierarchy": _comp(70, 0.3), "position": _comp(75, 0.2)},
                               comparisons={"hierarchy.kendall_tau": _est(0.8, 0.6, 0.9, 0.001),
                                            f"{EVIL}.x": _est(1, 0, 2)}))
    rows.append(LeaderboardRow(source="sim_dynamic:none", kind="simulated", n_participants=20, index=_est(40, 30, 50),
                               components={"hierarchy": _comp(40, 0.7), "position": Component(reason="no positions")},
                               missing={"position": "no positions"}))
    rows += [LeaderboardRow(source=f"variant.{i}", kind="simulated", n_participants=20, index=_est(30 - i, 20 - i, 40 - i))
             for i in range(n_variants)]
    rows.append(LeaderboardRow(source="empty", kind="simulated", n_participants=0, index=_est(NAN, NAN, NAN)))
    return Leaderboard(
        leaderboard=rows,
        components=[ComponentInfo(name="hierarchy", description=f"arm strengths {EVIL}", reference="uniform random"),
                    ComponentInfo(name="position", description="first-shown preference", reference="always first",
                                  in_index=False, reason="humans cannot be told from the reference")],
        pairwise=[PairwiseTest(a=EVIL, b="sim_dynamic:none", measure="index", difference=_est(32.5, 20, 45, 0.001),
                               p_adjusted=0.003, closer=EVIL),
                  PairwiseTest(a=EVIL, b="sim_dynamic:none", measure="hierarchy", difference=_est(30, 10, 50, 0.01),
                               p_adjusted=0.02, closer=EVIL)],
        correction="Holm across the pairs, per measure",
        human_split=HumanSplit(seed=7, n_participants=(10, 10)),
        n_boot=50,
        seed=3,
    )


def test_hostile_source_names_are_text_and_every_source_has_its_anchor():
    lb = hostile_leaderboard()
    html = render_leaderboard_html(lb)
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "&lt;script&gt;" in html  # shown, as text
    slugs = source_slugs(r.source for r in lb.leaderboard)
    assert len(set(slugs.values())) == len(slugs)
    for slug in slugs.values():
        assert re.fullmatch(r"[a-z0-9_-]+", slug)
        assert html.count(f'id="source-{slug}"') == 1 and f'href="#source-{slug}"' in html
    assert 'id="source-sim_dynamic-none"' in html and 'id="source-humans"' in html


def test_the_report_states_the_index_the_correction_and_each_component():
    html = render_leaderboard_html(hostile_leaderboard())
    assert "docs/fidelity.md" in html and "Holm across the pairs, per measure" in html
    assert "10 and 10 participants, split seed 7" in html
    assert "humans cannot be told from the reference" in html and "no positions" in html
    assert "hierarchy.kendall_tau" in html  # a source's comparisons, as a table
    assert html.count("<svg") == 3  # the index and one forest plot per component with scores
    assert "72.5" in html and "[65.0, 80.0]" in html


def test_nothing_is_loaded_from_a_network_and_scripts_are_forbidden():
    html = render_leaderboard_html(hostile_leaderboard())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "default-src 'none'" in html and "<script" not in html.lower()


def test_the_charts_are_well_formed_svg_with_distinct_colours_for_many_sources():
    lb = hostile_leaderboard(n_variants=30)
    ctx = leaderboard_context(lb)
    svg = str(ctx["index_chart"])
    ET.fromstring(svg)  # well-formed: the hostile name did not break out
    assert "&lt;script&gt;" in svg and "$x$" in svg  # a $ is shown, not read as mathematics
    order = [r.source for r in lb.leaderboard]
    simulated = [s for s in order if s != "humans"]
    assert len({charts.colour(s, order) for s in simulated}) == len(simulated)
    assert charts.colour("humans", order) == charts.colour("human") == "#000000"
    assert charts.colour("unlisted name") == charts.colour("unlisted name")  # stable without an order


def test_write_is_atomic_and_returns_the_path(tmp_path):
    path = write_leaderboard_html(hostile_leaderboard(), tmp_path / "out" / "lb.html")
    assert path.read_text().startswith("<!DOCTYPE html>") and [p.name for p in path.parent.iterdir()] == ["lb.html"]


@pytest.mark.browser
def test_the_comparison_report_loads_in_chromium_without_errors(browser, tmp_path: Path):  # noqa: F811
    path = write_leaderboard_html(hostile_leaderboard(), tmp_path / "lb.html")
    state = _load(browser, path, tmp_path / "lb.png")
    assert state["title"].startswith("simlab comparison report")
    assert state["pwned"] == 0 and state["scripts"] == 0 and state["imgs"] == 0
    assert [m for m in state["messages"] if m[0] == "error"] == [] and state["errors"] == []
    assert state["requests"] == []
    assert PAYLOADS["script"] in state["text"]


def test_a_run_report_given_a_leaderboard_shows_it_first_with_its_anchors():
    from simlab.fidelity.result import FidelityResult
    from simlab.fidelity.synthetic import make_synthetic
    from simlab.report import render_html

    tables = make_synthetic(4, domains=("values",), seed=1)
    result = FidelityResult(sources=tables.sources, n_boot=0, seed=0, analyses={})
    lb = hostile_leaderboard()
    html = render_html(result, tables=tables, leaderboard=lb)
    assert html.index('id="leaderboard"') < html.index('id="transcripts"') and 'href="#leaderboard"' in html
    assert 'id="source-sim_dynamic-none"' in html and "<script" not in html.lower()
    assert 'id="leaderboard"' not in render_html(result, tables=tables)  # one simulator: no leaderboard


@pytest.mark.slow  # a run of two variants × 12 participants and every analysis of its report (about 12 s)
def test_simlab_report_on_a_run_with_two_variants_shows_their_leaderboard(tmp_path):
    pytest.importorskip("simlab.fidelity.fidelity_index")
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from simlab.config import default_config, parse_config
    from simlab.fidelity import write_tables
    from simlab.report import write_run_report
    from simlab.run import run_experiment
    from simlab.testing import StubServer
    from tests.test_compare import N, synthetic

    human = write_tables(synthetic(("human",), seed=4), tmp_path / "human")
    with StubServer(deterministic=True) as srv:
        d = default_config().public_dict()
        d["endpoints"] = {"local": {"kind": "vllm", "base_url": srv.base_url}}
        d["out_dir"] = str(tmp_path / "runs")
        d["limit"] = N
        simulator = d.pop("simulator")
        d["simulators"] = [{**simulator, "id": "profile"}, {**simulator, "id": "none", "rendering": "none"}]
        # in a thread of its own: the module's Chromium fixture keeps an event loop running in this one
        with ThreadPoolExecutor(1) as pool:
            summary = pool.submit(asyncio.run, run_experiment(parse_config(d), progress=False, report=False)).result()
    report = write_run_report(summary.run_dir, human=str(human), n_boot=5)
    html = report.read_text()
    assert 'id="leaderboard"' in html and 'href="#leaderboard"' in html
    for slug in ("humans", "sim_dynamic-profile", "sim_dynamic-none"):
        assert f'id="source-{slug}"' in html
