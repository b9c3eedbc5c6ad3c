"""write_html on analyses of synthetic data with planted effects, and on the real Dialogue-Eval data."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from simlab.fidelity.analyses import hierarchy, position
from simlab.fidelity.result import FidelityResult
from simlab.fidelity.synthetic import make_synthetic
from simlab.report import render_html, scrub, write_html
from simlab.tables import Tables

STRENGTHS = {"GEN": 0.0, "PROMPT": 0.5, "DPFT": 1.0, "PPFT": 1.5}


def _result(position_bias: dict[str, float]) -> tuple[FidelityResult, object]:
    t = make_synthetic(80, strengths=STRENGTHS, position_bias=position_bias, seed=3)
    analyses = {"hierarchy": hierarchy(t, n_boot=30, seed=0), "position": position(t, n_boot=30, seed=0)}
    return FidelityResult(sources=["human", "sim_dynamic"], n_boot=30, seed=0, analyses=analyses), t


@pytest.fixture(scope="module")
def planted():
    return _result({"sim_dynamic": 1.2})


@pytest.fixture(scope="module")
def null():
    return _result({})


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", html)


def test_planted_effects_reach_the_verdicts(planted, tmp_path: Path):
    result, tables = planted
    path = write_html(result, tmp_path / "r.html", tables=tables)
    html = _text(path.read_text())
    assert "recovers the human arm ordering (Kendall τ = 1.00" in html
    assert "human ranks the arms PPFT &gt; DPFT &gt; PROMPT &gt; GEN" in html
    assert "For ranked best, sim_dynamic puts the first-shown response on top" in html
    assert "points more often than people, beyond what the arms explain" in html
    # a chart per section that has estimates, inline
    assert html.count("<svg") == 2 and "Transcripts" in html  # one chart per analysis run


def test_no_planted_difference_no_significant_verdict(null):
    result, tables = null
    html = _text(render_html(result, tables=tables))
    assert "not significantly different from people" in html
    assert "differs significantly" not in html
    assert "recovers the human arm ordering" in html  # both sources share the planted hierarchy


def test_self_contained_and_locked_down(planted):
    result, tables = planted
    html = render_html(result, tables=tables)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)  # nothing loaded from a network
    assert "<link" not in html.lower() and "@import" not in html
    assert not re.search(r"url\((?!#)", html)  # only in-document references (SVG clip paths)


def test_secrets_are_scrubbed_everywhere(planted):
    result, tables = planted
    meta = {"run_id": "r1", "command": "simlab run --key sk-abcdefgh12345678", "config": {
        "endpoints": {"hosted": {"kind": "openai", "base_url": "https://user:sk-PASSWORD99999999@api.example.com/v1?key=zzz",
                                 "api_key_env": "OPENAI_API_KEY"}},
        "arms": [{"id": "GEN", "endpoint": "hosted", "model": "gpt", "description": "uses sk-LEAKEDKEY123456789"}]}}
    html = render_html(result, meta=meta, tables=tables)
    assert "sk-abcdefgh" not in html and "sk-LEAKED" not in html and "PASSWORD" not in html and "zzz" not in html
    assert "https://api.example.com/v1" in html and "[redacted]" in html
    assert scrub("token sk-12345678 and sk-short") == "token [redacted] and sk-short"


def test_real_human_data_dialogue_eval(dialogue_eval_dir: Path, tmp_path: Path):
    from simlab.fidelity import import_dialogue_eval

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = import_dialogue_eval(dialogue_eval_dir)
    # the free-topic rounds: the README's published ordering holds there
    ids = set(tables.conversations.loc[tables.conversations["domain"].str.startswith("free_topic"), "conversation_id"])
    tables = Tables(**{name: frame[frame["conversation_id"].isin(ids)] if "conversation_id" in frame else frame
                       for name, frame in tables.items()})
    analyses = {"hierarchy": hierarchy(tables, n_boot=20, seed=0), "position": position(tables, n_boot=20, seed=0)}
    result = FidelityResult(sources=["human"], n_boot=20, seed=0, analyses=analyses)
    html = _text(write_html(result, tmp_path / "de.html", tables=tables).read_text())
    # the fitted ordering is what the verdict states; its ends are the published ones
    ordering = analyses["hierarchy"].per_source["human"].ordering
    assert ordering[0] == "biencoder" and ordering[-1] == "qc"
    assert f"human ranks the arms {' &gt; '.join(ordering)} over" in html
    assert "Transcripts" in html and "b:" not in html[:200]


def test_generation_errors_section_escapes_and_renders_real_human_data(dialogue_eval_dir: Path):
    from simlab.fidelity import import_dialogue_eval
    from simlab.fidelity.analyses import gen_errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = import_dialogue_eval(dialogue_eval_dir)
    # an arm whose name is markup must come out as text
    evil = "<img src=x onerror=alert(1)>"
    turns = tables.turns.assign(arm=tables.turns["arm"].replace({"qc": evil}))
    judgements = tables.judgements.assign(arm=tables.judgements["arm"].replace({"qc": evil}))
    tables = Tables(**{**dict(tables.items()), "turns": turns, "judgements": judgements})
    result = FidelityResult(sources=["human"], n_boot=0, seed=0, analyses={"gen_errors": gen_errors(tables)})
    html = _text(render_html(result, tables=tables))
    assert '<section id="gen_errors"' in html and "<h2>Generation errors</h2>" in html
    assert evil not in html and "&lt;img src=x onerror=alert(1)&gt;: replies flagged gen_error" in html
    assert "Not recorded for human: the conversation flag max_turns_reached, stop_reason, gen_error per reply" in html
    assert "of conversations are flagged gen_error" in html
