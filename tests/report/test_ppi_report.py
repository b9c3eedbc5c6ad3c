"""The PPI section of the report: PPI vs humans-only CIs, λ̂, humans saved and the "worth about K extra
humans" sentence, escaped, and clean in headless Chromium."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from _payloads import PAYLOADS
from test_report_browser import _load, browser  # noqa: F401 - the module's Chromium fixture

from simlab.fidelity.analyses.ppi import ppi
from simlab.fidelity.calibration import ppi as cal
from simlab.fidelity.ppi_result import PPIResult
from simlab.fidelity.result import FidelityResult
from simlab.report.html import render_html
from simlab.report.ppi_section import ppi_section

EVIL_SOURCE = "sim_dynamic:" + PAYLOADS["img"]
EVIL_ARM = PAYLOADS["script"]


def _result() -> FidelityResult:
    t = cal.planted(7, True, rho=0.9, n=30, n_sim_only=60, n_events=4)
    j = t.judgements
    j = j.assign(source=j["source"].replace({"sim": EVIL_SOURCE}), arm=j["arm"].replace({"D": EVIL_ARM}))
    r = ppi(dataclasses.replace(t, judgements=j))
    return FidelityResult(sources=["human", EVIL_SOURCE], n_boot=0, seed=0, analyses={"ppi": r})


def test_section_says_how_many_humans_were_saved() -> None:
    r = _result().analyses["ppi"]
    assert isinstance(r, PPIResult)
    s = ppi_section(r)
    src = r.per_source[EVIL_SOURCE]
    assert src.first_shown_excess is not None and src.first_shown_excess.humans_saved is not None
    saved = f"{src.first_shown_excess.humans_saved:.0f}".replace("-", "−")
    assert s.verdicts[0].startswith(f"With {EVIL_SOURCE}, the simulated participants were worth about {saved} extra "
                                    "humans for the position effect")
    assert "for the arm hierarchy (median over the arms' choice shares)" in s.verdicts[0]
    assert any(v.startswith(f"With {EVIL_SOURCE}, PPI orders the arms") for v in s.verdicts)
    measures = [row.measure for row in s.rows]
    assert "first-shown excess (points): PPI" in measures and "first-shown excess (points): humans only" in measures
    assert f"choice share of {EVIL_ARM} (%): λ̂ · humans saved" in measures
    assert len(s.charts) == 1


def test_not_available_sources_say_why() -> None:
    r = PPIResult(per_source={"sim": ppi(cal.planted(1, False, rho=0.9, n=30, n_sim_only=0, n_events=2))
                                      .per_source["sim"]})
    s = ppi_section(r)
    assert s.verdicts == ["sim: Not available: sim has 0 participant(s) without a human (at least 2 are needed: "
                          "without them the simulated participants add nothing to the humans' own estimate)."]


@pytest.mark.browser
def test_html_escapes_and_loads_cleanly_in_chromium(browser, tmp_path: Path) -> None:  # noqa: F811
    html = render_html(_result())
    section = html[html.index('<section id="ppi"'):]
    section = section[: section.index("</section>")]
    assert "Human estimates sharpened by simulated participants (PPI)" in section
    assert "the simulated participants were worth about" in section
    for payload in (PAYLOADS["img"], PAYLOADS["script"]):
        assert payload not in html
    assert "&lt;script&gt;" in section and "&lt;img src=x" in section
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    state = _load(browser, page)
    assert state["pwned"] == 0 and state["scripts"] == 0 and state["imgs"] == 0
    assert [m for m in state["messages"] if m[0] == "error"] == [] and state["errors"] == []
    assert "were worth about" in state["text"] and EVIL_ARM in state["text"]

