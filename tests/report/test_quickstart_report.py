"""The quickstart's report: README command 1's run (its config, against the stub server instead of the
embedded model) ends with estimates and 95% CIs in every analysis that needs no human data, and the
analyses that do say so and how to add people."""

from __future__ import annotations

import asyncio
import html
import json
import re
import zlib
from pathlib import Path
from typing import Any

from _payloads import REPO

from simlab.config import default_config, parse_config
from simlab.fidelity.analyses._prep import MIN_PARTICIPANTS
from simlab.run import run_experiment
from simlab.testing import StubServer

WITHIN_SIMULATOR = ("hierarchy", "position", "dynamics", "topics", "traits")
"""Analyses of the simulated participants alone: each must show estimates with CIs."""
NEED_PEOPLE = ("agreement", "user_text", "distributions", "ppi")
"""Analyses that compare with people: without human data each must say how to add them."""
CI = re.compile(r'<td class="num">(−?\d[\d.,]*)(–| to )(−?\d[\d.,]*)</td>')


def _replies(body: dict[str, Any]) -> str | None:
    """Free-text replies of varied length (a stable function of the request), as a real model's
    are: the trait analysis's length coefficient needs lengths that differ."""
    if body.get("response_format"):
        return None  # structured instruments: schema-generated JSON from the stub
    words = 4 + zlib.crc32(json.dumps(body, sort_keys=True).encode()) % 40
    return " ".join(["word"] * words)


def _sections(page: str) -> dict[str, tuple[str, str]]:
    """Each analysis section of the report: its status class and its HTML."""
    found = re.findall(r'<section id="(\w+)" class="status-(\w+)">(.*?)</section>', page, flags=re.S)
    return {key: (status, body) for key, status, body in found}


def test_the_quickstart_config_has_enough_participants_for_the_analyses():
    config = default_config()
    personas = (REPO / config.experiment.personas).read_text().splitlines()
    assert config.limit is not None and MIN_PARTICIPANTS <= config.limit <= len(personas)
    assert config.experiment.protocol.max_turns <= 2


def test_quickstart_report_shows_estimates_and_says_what_needs_people(tmp_path: Path):
    with StubServer(script=_replies) as server:
        data = default_config().public_dict()
        data["endpoints"] = {"local": {"kind": "vllm", "base_url": server.base_url}}
        data["out_dir"] = str(tmp_path / "runs")
        data["personas"] = str(REPO / "personas" / "sample.jsonl")
        data["summary"]["cache_dir"] = str(tmp_path / "summaries")
        summary = asyncio.run(run_experiment(parse_config(data), progress=False))
    assert summary.sessions_completed == 12 and summary.sessions_failed == 0
    assert summary.report is not None
    page = summary.report.read_text()
    sections = _sections(page)
    for key in WITHIN_SIMULATOR:
        status, body = sections[key]
        assert status == "ok" and "Not available" not in body, (key, html.unescape(body)[:500])
        assert CI.search(body), f"{key}: no 95% CI in its table"
    for key in NEED_PEOPLE:
        status, body = sections[key]
        text = html.unescape(body)
        assert status == "not_available", key
        assert "compares the simulated participants with real people" in text, key
        assert "--human DATA" in text and "docs/fidelity.md" in text, key
    note = html.unescape(page)
    assert f"python -m simlab.report --run {summary.run_dir} --human DATA" in note
