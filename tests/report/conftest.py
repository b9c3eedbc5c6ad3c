"""Fixtures of the report tests: a real stub-server run whose replies and personas carry XSS payloads."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from _payloads import PERSONA_MARK, PERSONA_PAYLOAD, REPLY_PAYLOAD, REPO


def shared_data() -> Path:
    """``$SIMLAB_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("SIMLAB_SHARED_DATA") or REPO.parent / "shared" / "data")


def _script(body: dict[str, Any]) -> str | None:
    """Free-text replies carry payloads; the simulated user parrots its persona's payload."""
    if body.get("response_format"):
        return None  # structured instruments: schema-generated JSON from the stub
    text = json.dumps(body, ensure_ascii=False)
    if PERSONA_MARK in text and "persona" in text.lower():
        return f"Hello, as I said: {PERSONA_PAYLOAD}"
    return REPLY_PAYLOAD


def _personas(path: Path) -> Path:
    """Two sample personas with payloads in their free text."""
    lines = (REPO / "personas" / "sample.jsonl").read_text().splitlines()[:2]
    out = []
    for line in lines:
        p = json.loads(line)
        p["self_description"] = PERSONA_PAYLOAD
        out.append(json.dumps(p))
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture(scope="session")
def payload_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run (stub server, quickstart protocol) whose texts carry the payloads."""
    from simlab.config import default_config, parse_config
    from simlab.run import run_experiment
    from simlab.testing import StubServer

    tmp = tmp_path_factory.mktemp("payload_run")
    with StubServer(script=_script) as srv:
        d = default_config().public_dict()
        d["endpoints"] = {"local": {"kind": "vllm", "base_url": srv.base_url}}
        d["out_dir"] = str(tmp / "runs")
        d["personas"] = str(_personas(tmp / "personas.jsonl"))
        d["limit"] = 2
        d["protocol"]["domains"] = ["unguided", "emotional_wellbeing"]  # the report shows both domains
        summary = asyncio.run(run_experiment(parse_config(d), progress=False, report=False))
    return Path(summary.run_dir)


@pytest.fixture
def run_copy(payload_run: Path, tmp_path: Path) -> Path:
    """A private copy of the payload run (tests write report.html into it)."""
    dest = tmp_path / payload_run.name
    shutil.copytree(payload_run, dest)
    return dest


@pytest.fixture(scope="session")
def dialogue_eval_dir() -> Path:
    """The real Dialogue-Eval CSVs (skips when the shared data are absent)."""
    path = shared_data() / "dialogue_eval"
    if not (path / "FreeTopicRound1.csv").is_file():
        pytest.skip(f"Dialogue-Eval data not found at {path}")
    return path
