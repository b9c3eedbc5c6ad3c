"""The stub server's knobs used by benchmarks: a latency model, random fault rates, a bounded log."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import httpx
import pytest

from simlab.testing import Latency, StubServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_latency_grows_with_the_reply_and_jitters_within_its_bounds():
    lat = Latency(base_s=2.0, per_token_s=0.015, jitter=0.2)
    rng = random.Random(0)
    draws = [lat.seconds(100, rng) for _ in range(2000)]
    assert min(draws) >= 3.5 * 0.8 and max(draws) <= 3.5 * 1.2
    assert abs(sum(draws) / len(draws) - 3.5) < 0.05
    assert Latency(1.0, 0.5, 0.0).seconds(4, rng) == 3.0


def test_replies_wait_for_the_latency_model():
    with StubServer(latency=Latency(base_s=0.3, per_token_s=0.0, jitter=0.0)) as server:
        t0 = time.perf_counter()
        r = httpx.post(server.base_url + "/chat/completions", json=BODY, timeout=10)
        assert r.status_code == 200 and time.perf_counter() - t0 >= 0.3


def test_fault_rates_give_each_fault_in_its_share():
    rates = {"5xx": 0.3, "429": 0.2, "malformed": 0.2}
    with StubServer(fault_rates=rates, keep_log=False, seed=1) as server:
        replies = [httpx.post(server.base_url + "/chat/completions",
                              json={**BODY, "response_format": {"type": "json_object", "schema": {}}}, timeout=10)
                   for _ in range(400)]
        stats = httpx.get(server.base_url.removesuffix("/v1") + "/stats").json()
    n500 = sum(r.status_code == 500 for r in replies)
    n429 = [r for r in replies if r.status_code == 429]
    ok = [r for r in replies if r.status_code == 200]
    malformed = 0
    for r in ok:
        try:
            json.loads(r.json()["choices"][0]["message"]["content"])
        except json.JSONDecodeError:
            malformed += 1
    # binomial(400, p): within 4.5 standard deviations
    for count, p in ((n500, 0.3), (len(n429), 0.2), (malformed, 0.2)):
        assert abs(count - 400 * p) < 4.5 * (400 * p * (1 - p)) ** 0.5, (count, p)
    assert all(r.headers["Retry-After"] == "1" for r in n429)
    assert stats["requests"] == 400 and stats["status"] == {"200": len(ok), "429": len(n429), "500": n500}
    assert server.requests == []  # keep_log=False keeps counts, not bodies


def test_timeout_fault_never_answers():
    with StubServer(fault_rates={"timeout": 1.0}) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.base_url + "/chat/completions", json=BODY, timeout=0.5)


def test_bad_fault_rates_are_refused():
    with pytest.raises(ValueError, match="sum to <= 1"):
        StubServer(fault_rates={"5xx": 0.7, "429": 0.5})
    proc = subprocess.run([sys.executable, "-m", "simlab.testing", "--fault-rate", "gremlins=0.1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "fault kind must be one of 5xx, 429, timeout, malformed" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "simlab.testing", "--fault-rate", "5xx=0.8", "--fault-rate",
                           "429=0.4"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "add up to 1.2" in proc.stderr
