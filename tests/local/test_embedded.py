"""The embedded llama.cpp backend with the real SmolLM2-135M model (slow: real inference)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from simlab.config import EndpointConfig, ModelSpec, SamplingConfig, default_config, parse_config
from simlab.llm import LLMClient
from simlab.local import LocalServer, find_model
from tests.conftest import REPO

pytestmark = pytest.mark.slow


class Mood(BaseModel):
    mood: Literal["positive", "neutral", "negative"]
    confidence: int = Field(ge=0, le=100)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_model_ships_in_the_wheel():
    path = find_model()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


async def test_server_answers_chat_and_structured_then_leaves_nothing():
    server = LocalServer(n_ctx=2048)
    with server:
        pid = server.pid
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as resp:
            models = json.load(resp)
        assert [m["id"] for m in models["data"]] == ["smollm2-135m"]
        client = LLMClient({"local": EndpointConfig(kind="local", base_url=server.base_url)})
        spec = ModelSpec(endpoint="local", model="smollm2-135m", sampling=SamplingConfig(max_tokens=32, seed=1))
        chat = await client.chat(spec, [{"role": "user", "content": "Name a colour."}])
        assert chat.text.strip() and chat.call.completion_tokens > 0
        res = await client.structured(spec, [{"role": "user", "content": "Mood of 'I love rain'? JSON."}], Mood)
        assert isinstance(res.value, Mood)
        # four concurrent requests (the server runs one at a time): none comes back empty
        outs = await asyncio.gather(*(client.chat(spec, [{"role": "user", "content": f"Say {i}."}]) for i in range(4)))
        assert all(o.text.strip() for o in outs)
    assert not _alive(pid)


def test_serve_foreground_prints_url_and_stops_cleanly_on_ctrl_c():
    proc = subprocess.Popen([sys.executable, "-m", "simlab.serve"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line and "smollm2-135m" in line, line
        url = line.split(" at ")[1].split()[0]
        body = json.dumps({"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        req = urllib.request.Request(f"{url}/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert json.load(resp)["choices"][0]["message"]["content"] is not None
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the llama.cpp server should be a child process"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        time.sleep(0.5)
        assert not any(_alive(int(c)) for c in children)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_check_exits_zero():
    out = subprocess.run([sys.executable, "-m", "simlab.serve", "--check"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for arm in ("GEN", "PROMPT", "SUMMARY", "STYLE"):
        assert f"[{arm}] chat" in out.stdout and f"[{arm}] structured" in out.stdout


def test_one_persona_one_domain_two_turns_on_the_real_model(tmp_path):
    from simlab.run import run_experiment
    from simlab.store import load_run, read_table

    data = default_config().public_dict()
    data.update(limit=1, out_dir=str(tmp_path / "runs"))
    data["protocol"].update(domains=["values"], min_turns=2, max_turns=2)
    cfg = parse_config(data)
    summary = asyncio.run(run_experiment(cfg, progress=False, report=False))
    failures = read_table(summary.run_dir, "failures")
    assert summary.sessions_completed == 1, failures.to_dict("records")
    t = load_run(summary.run_dir)
    assert len(t.conversations) == 1 and int(t.conversations.iloc[0]["n_turns"]) == 2
    j = t.judgements
    assert sorted(j["rank"]) == [1, 2, 3, 4] and sorted(j["provenance_rank"]) == [1, 2, 3, 4]
    assert j["rating_preference"].between(0, 100).all() and j["wtp_bid"].between(0, 10).all()
    assert j["opening_choice"].sum() == 1
    user_turns = t.turns[t.turns["role"] == "user"]
    assert len(user_turns) == 2 and user_turns["text"].str.len().min() > 0
