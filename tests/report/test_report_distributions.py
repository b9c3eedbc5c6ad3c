"""The distributions section: overlaid distributions per instrument, the sd_ratio / W1 excess table, the
spread-collapse verdict, escaping of data text, and a clean load in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from _payloads import PAYLOADS
from test_report_browser import _load, browser  # noqa: F401 - the browser fixture, shared

from simlab.fidelity.analyses.distributions import distributions
from simlab.fidelity.calibration.distributions import simulate
from simlab.fidelity.result import FidelityResult
from simlab.report import write_html
from simlab.report.distributions import section
from simlab.report.sections import build_sections
from simlab.tables import Tables

TITLE = "Distributions of the answers"


def _result(t: Tables) -> FidelityResult:
    return FidelityResult(sources=t.sources, n_boot=50, seed=0,
                          analyses={"distributions": distributions(t, n_boot=50, seed=0, n_perm=99)})


@pytest.fixture(scope="module")
def collapsed() -> Tables:
    """A planted spread collapse (simulated SD 0.6 × human) whose arm names carry HTML payloads."""
    t = simulate(5, True, 40)
    arms = {"GEN": PAYLOADS["script"], "PROMPT": PAYLOADS["img"]}
    return Tables(judgements=t.judgements.assign(arm=t.judgements["arm"].replace(arms)))


def test_the_section_names_the_collapse_and_draws_each_instrument(collapsed: Tables) -> None:
    r = _result(collapsed).analyses["distributions"]
    s = section(r)
    assert s.title == TITLE and len(s.charts) == 1 and s.charts[0].startswith("<svg")
    assert any(v.startswith("Spread collapse in rating_preference of sim_dynamic") for v in s.verdicts)
    measures = {row.measure for row in s.rows}
    assert "rating_preference: SD ratio (sim / human)" in measures
    assert f"rating_preference [{PAYLOADS['script']}]: W1 excess (bias-corrected distance)" in measures


def test_no_collapse_says_so() -> None:
    s = section(_result(simulate(6, False, 40)).analyses["distributions"])
    assert any(v.startswith("No spread collapse") for v in s.verdicts)


def test_a_result_without_the_analysis_has_no_section(collapsed: Tables) -> None:
    old = FidelityResult(sources=["human", "sim_dynamic"], n_boot=10, seed=0, analyses={})
    assert TITLE not in [s.title for s in build_sections(old)]
    assert TITLE in [s.title for s in build_sections(_result(collapsed))]


def test_data_text_is_escaped_in_the_page(collapsed: Tables, tmp_path: Path) -> None:
    html = write_html(_result(collapsed), tmp_path / "r.html").read_text(encoding="utf-8")
    assert TITLE in html
    assert PAYLOADS["script"] not in html and PAYLOADS["img"] not in html


@pytest.mark.browser
def test_the_section_loads_cleanly_in_chromium(browser, collapsed: Tables, tmp_path: Path) -> None:  # noqa: F811
    path = write_html(_result(collapsed), tmp_path / "dist.html", tables=collapsed)
    state = _load(browser, path)
    assert [m for m in state["messages"] if m[0] == "error"] == [] and state["errors"] == []
    assert state["pwned"] == 0 and state["scripts"] == 0 and state["requests"] == []
    assert TITLE in state["text"] and "Spread collapse in rating_preference" in state["text"]
