"""The client layer against a real HTTP server on 127.0.0.1 (the scripted stub)."""

from __future__ import annotations

import asyncio
import errno
import json
import time
from typing import Literal

import openai  # noqa: F401 - loaded up front: the client imports it on a first failure, which took seconds
import pytest
from pydantic import BaseModel, Field

from simlab.config import LitellmEndpoint, ModelSpec, OpenAIEndpoint, SamplingConfig
from simlab.errors import BackendUnavailable, BackendUnusable, LLMError, StructuredOutputError
from simlab.llm import LLMClient, affinity, response_format
from simlab.llm.backends import endpoint_config
from simlab.testing import Fault, StubServer
from tests.virtual_clock import VirtualClockLoop, run_virtual

MSGS = [{"role": "user", "content": "hello there"}]


class Verdict(BaseModel):
    label: Literal["yes", "no"]
    score: int = Field(ge=0, le=10)


@pytest.fixture
def server():
    with StubServer() as s:
        yield s


_opened: list[LLMClient] = []


def client_for(server: StubServer, **ep) -> LLMClient:
    ep.setdefault("timeout_s", 5)
    client = LLMClient({"stub": OpenAIEndpoint(base_url=server.base_url, **ep)})
    _opened.append(client)
    return client


@pytest.fixture(autouse=True)
async def _close_clients():
    # pytest-asyncio's loops may end without closing async generators (asyncio.run does, and
    # that closes a client nobody closed): close each test's clients here
    yield
    while _opened:
        await _opened.pop().aclose()


SPEC = ModelSpec(endpoint="stub", model="m1", sampling=SamplingConfig(max_tokens=20))


async def test_chat_returns_text_and_usage(server):
    calls = []
    client = LLMClient({"stub": OpenAIEndpoint(base_url=server.base_url)}, on_call=calls.append)
    res = await client.chat(SPEC, MSGS, prompt_name="p.j2", prompt_hash="abc")
    assert "m1" in res.text
    assert res.call.attempts == 1 and res.call.status == "ok"
    assert res.call.prompt_tokens == 2 and res.call.completion_tokens > 0
    [stored] = calls  # on_call gets the one record the run store keeps
    assert (stored.model, stored.prompt_name, stored.prompt_hash, stored.attempts) == ("m1", "p.j2", "abc", 1)
    assert stored.completion_tokens == res.call.completion_tokens and stored.role == "simulator"
    body = server.requests[0].body
    assert body["model"] == "m1" and body["max_tokens"] == 20 and body["messages"] == MSGS


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_transient_status_is_retried(server, status):
    server.add_fault(Fault(status=status), Fault(status=status))
    client = client_for(server)
    res = await client.chat(SPEC, MSGS)
    assert res.call.attempts == 3
    assert [r.status for r in server.requests] == [status, status, 200]


async def test_retry_after_is_honoured(server):
    server.add_fault(Fault(status=429, retry_after=0.8))
    client = client_for(server)
    res = await client.chat(SPEC, MSGS)
    assert res.call.attempts == 2
    gap = server.requests[1].started - server.requests[0].finished
    assert gap >= 0.75, f"second attempt came {gap:.3f} s after a Retry-After of 0.8 s"


async def test_timeout_is_retried(server):
    server.add_fault(Fault(kind="delay", delay=2.0))
    client = client_for(server, timeout_s=0.4)
    res = await client.chat(SPEC, MSGS)
    assert res.call.attempts == 2
    assert res.text


async def test_client_error_is_not_retried(server):
    server.add_fault(Fault(status=400))
    client = client_for(server)
    with pytest.raises(LLMError) as info:
        await client.chat(SPEC, MSGS)
    assert info.value.attempts == 1
    assert len(server.requests) == 1


async def test_gives_up_after_max_attempts_with_typed_error(server):
    server.add_fault(*[Fault(status=500)] * 10)
    client = client_for(server, max_attempts=3)
    with pytest.raises(LLMError) as info:
        await client.chat(SPEC, MSGS)
    assert info.value.attempts == 3 and info.value.status == 500
    assert len(server.requests) == 3
    assert info.value.call.status == "error"  # the failed call is still accounted for


async def test_a_server_that_keeps_answering_503_is_unavailable_not_a_failed_call(server):
    # nothing answered: the call retries (then probes) until the endpoint's window ends
    server.add_fault(*[Fault(status=503)] * 100)
    client = client_for(server, max_attempts=3, dead_after_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        await client.chat(SPEC, MSGS)
    assert time.monotonic() - t0 >= 0.5
    assert not isinstance(info.value, LLMError)  # nothing a session could be blamed for
    assert info.value.endpoint == "stub" and info.value.urls == [server.base_url]
    attempts = info.value.call.attempts
    assert f"HTTP 503, {attempts} attempts" in str(info.value) and attempts >= 2 and len(server.requests) == attempts
    assert "nothing usable came back from it for" in str(info.value) and "(dead_after_s = 0.5)" in str(info.value)
    assert info.value.call.status == "error"  # still accounted for


async def test_total_deadline_bounds_a_call(server):
    # each 500 asks for a retry after 0.1 s, so no 50 attempts fit in the 1.5 s deadline (waits are
    # never shorter than asked, on any machine); without the deadline all 50 are made, in ~5 s
    server.add_fault(*[Fault(status=500, retry_after=0.1)] * 1000)
    client = client_for(server, max_attempts=50, deadline_s=1.5)
    with pytest.raises(LLMError) as info:
        await client.chat(SPEC, MSGS)
    err = info.value
    assert "its deadline of 1.5 s was spent" in str(err) and err.status == 500, err
    assert 1 <= err.attempts < 50 and len(server.requests) == err.attempts  # each attempt reached the server
    assert all(r.status == 500 for r in server.requests)
    assert "HTTP 500" in str(err.__cause__)  # the last failure is the cause, not a client-side stop


async def test_a_retry_the_deadline_cuts_short_ends_on_the_failure_before(server):
    # the retry starts with 0.2 s of the 1.5 s deadline left and the server takes 1 s: that attempt
    # times out because of the deadline, not the server, so the call ends on the 500 before it (as on a
    # loaded machine where a retry starts with a millisecond left), not on a stopped backend
    server.add_fault(Fault(status=500, retry_after=1.3), Fault(kind="delay", delay=1.0))
    client = client_for(server, max_attempts=5, deadline_s=1.5)
    with pytest.raises(LLMError) as info:
        await client.chat(SPEC, MSGS)
    err = info.value
    assert not isinstance(err, BackendUnavailable), err
    assert err.status == 500 and "its deadline of 1.5 s was spent" in str(err), err
    # 2: the cut retry was sent; 1 only on a machine so busy the wait overran into the last MIN_ATTEMPT_S
    assert err.attempts in (1, 2)


async def test_no_retry_is_sent_into_the_last_sliver_of_the_deadline(server):
    # the wait asked for leaves 20 ms of the deadline: less than MIN_ATTEMPT_S, so no request is sent
    server.add_fault(Fault(status=500, retry_after=1.48))
    client = client_for(server, max_attempts=5, deadline_s=1.5)
    with pytest.raises(LLMError) as info:
        await client.chat(SPEC, MSGS)
    assert info.value.status == 500 and info.value.attempts == 1 and len(server.requests) == 1


async def test_structured_valid_reply_parses(server):
    server.replies["m1"] = __import__("collections").deque(['{"label": "yes", "score": 7}'])
    client = client_for(server)
    res = await client.structured(SPEC, MSGS, Verdict)
    assert res.value == Verdict(label="yes", score=7)
    assert res.call.attempts == 1


async def test_structured_schema_violation_retried_then_ok(server):
    server.add_fault(Fault(kind="schema_violation"), Fault(kind="malformed_json"))
    client = client_for(server)
    res = await client.structured(SPEC, MSGS, Verdict)
    assert isinstance(res.value, Verdict)
    assert res.call.attempts == 3 and len(server.requests) == 3


async def test_structured_keeps_failing_raises_with_raw_text(server):
    server.add_fault(*[Fault(kind="schema_violation")] * 3)
    client = client_for(server, schema_attempts=3)
    with pytest.raises(StructuredOutputError) as info:
        await client.structured(SPEC, MSGS, Verdict)
    err = info.value
    assert '"unexpected": true' in err.raw_text
    assert "label" in err.reason or "score" in err.reason
    assert err.call.status == "schema_error" and err.call.attempts == 3


async def test_structured_out_of_range_value_is_a_schema_failure(server):
    from collections import deque

    server.replies["m1"] = deque(['{"label": "yes", "score": 99}'])
    client = client_for(server, schema_attempts=2)
    with pytest.raises(StructuredOutputError) as info:
        await client.structured(SPEC, MSGS, Verdict)
    assert "score" in info.value.reason and info.value.raw_text == '{"label": "yes", "score": 99}'


@pytest.mark.parametrize("kind,expected_type", [("vllm", "json_schema"), ("local", "json_object")])
async def test_dialect_request_bodies(server, kind, expected_type):
    client = LLMClient({"stub": endpoint_config({"kind": kind, "base_url": server.base_url})})
    res = await client.structured(SPEC, MSGS, Verdict)
    assert isinstance(res.value, Verdict)  # generated from the schema the body carried
    fmt = server.requests[0].body["response_format"]
    assert fmt["type"] == expected_type
    schema = fmt["json_schema"]["schema"] if expected_type == "json_schema" else fmt["schema"]
    assert set(schema["properties"]) == {"label", "score"}
    if kind == "vllm":
        assert schema["properties"]["score"]["maximum"] == 10
    else:  # llama.cpp's grammar ignores bounds but enforces enums
        assert schema["properties"]["score"]["enum"] == list(range(11))


def test_response_format_inlines_refs():
    class Inner(BaseModel):
        a: int

    class Outer(BaseModel):
        x: Inner
        y: Inner

    fmt = response_format(Outer, "json_object_schema")
    assert "$defs" not in fmt["schema"]
    assert fmt["schema"]["properties"]["x"]["properties"]["a"]["type"] == "integer"


async def test_in_flight_bound_is_never_exceeded():
    with StubServer(delay=0.1) as server:
        client = LLMClient({"stub": OpenAIEndpoint(base_url=server.base_url, max_in_flight=3)})
        await asyncio.gather(*(client.chat(SPEC, MSGS) for _ in range(24)))
    assert len(server.requests) == 24
    assert server.max_in_flight == 3  # saturated, never above the bound


async def test_rate_limit_spaces_request_starts():
    with StubServer() as server:
        client = LLMClient({"stub": OpenAIEndpoint(base_url=server.base_url, rate_limit=10)})
        let_go = time.time()  # the server's clock
        await asyncio.gather(*(client.chat(SPEC, MSGS) for _ in range(25)))
        await client.aclose()
    starts = sorted(r.started for r in server.requests)
    # The throttle lets 10 go at once, the next 10 a period after the first, the last 5 a period
    # after the 11th: the k-th arrival (from 0) cannot come before k // 10 periods after the calls
    # were let go. A busy machine only delays arrivals, which these bounds allow; without the
    # throttle all 25 arrive within a fraction of a period.
    early = [(k, round(t - let_go, 3)) for k, t in enumerate(starts) if t - let_go < k // 10 * 1.0 - 0.01]
    assert len(starts) == 25 and not early, f"(arrival, seconds after the start) before the limit allows: {early}"


async def test_api_key_from_environment_reaches_server_only(monkeypatch):
    monkeypatch.setenv("SIMLAB_TEST_KEY", "sk-secret-123")
    with StubServer(api_key="sk-secret-123") as server:
        client = LLMClient({"stub": OpenAIEndpoint(base_url=server.base_url, api_key_env="SIMLAB_TEST_KEY")})
        res = await client.chat(SPEC, MSGS)
    assert res.text
    assert "sk-secret-123" not in repr(res.call)


async def test_wrong_api_key_is_a_final_error(monkeypatch):
    monkeypatch.setenv("SIMLAB_TEST_KEY", "sk-wrong")
    with StubServer(api_key="sk-right") as server:
        client = LLMClient({"stub": OpenAIEndpoint(base_url=server.base_url, api_key_env="SIMLAB_TEST_KEY")})
        with pytest.raises(LLMError) as info:
            await client.chat(SPEC, MSGS)
    assert info.value.attempts == 1 and info.value.status == 401
    assert "HTTP 401" in str(info.value) and "bad api key" in str(info.value)  # the server's reason
    assert "sk-wrong" not in str(info.value)


def _refused_url() -> str:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_a_refused_connection_is_backend_unavailable_not_a_wait_for_timeouts():
    # a refusal is seen at once, not waited on until timeout_s: the cause is the refusal, on every attempt
    # a server that never answered: the window starts at the endpoint's first request
    client = LLMClient({"dead": OpenAIEndpoint(base_url=_refused_url(), max_attempts=4, timeout_s=5,
                                               dead_after_s=1.0)})
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        await client.chat(ModelSpec(endpoint="dead", model="m"), MSGS)
    took = time.monotonic() - t0
    attempts = info.value.call.attempts
    assert info.value.endpoint == "dead" and f"refused or dropped, {attempts} attempts" in str(info.value)
    assert "no reply within" not in str(info.value) and attempts >= 2
    assert 1.0 <= took < 10, took  # the window, not timeouts (4 attempts × timeout_s 5 would be 20 s)
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED, repr(cause)


async def test_replicas_keep_each_affinity_key_on_one_server_and_spread_the_keys():
    with StubServer() as a, StubServer() as b, StubServer() as c:
        replicas = [a, b, c]
        client = LLMClient({"stub": OpenAIEndpoint(base_url=a.base_url, max_in_flight=2)},
                           base_urls={"stub": [r.base_url for r in replicas]})

        async def session(key: str) -> None:
            with affinity(key):
                for turn in range(3):
                    await asyncio.gather(*(client.chat(SPEC, [{"role": "user", "content": f"{key} {turn} {i}"}])
                                           for i in range(2)))

        await asyncio.gather(*(session(f"s{k}") for k in range(6)))
        where = {}
        for i, r in enumerate(replicas):
            for req in r.requests:
                where.setdefault(req.body["messages"][0]["content"].split()[0], set()).add(i)
        assert sorted(where) == [f"s{k}" for k in range(6)]
        assert all(len(servers) == 1 for servers in where.values())  # each session on one replica
        assert all(r.requests for r in replicas)  # and the sessions spread over all of them
        assert max(r.max_in_flight for r in replicas) <= 2  # the bound holds per replica


async def test_a_dead_replica_is_left_and_its_sessions_continue_on_the_others():
    with StubServer() as a, StubServer() as b:
        dead = _refused_url()
        client = LLMClient({"stub": OpenAIEndpoint(base_url=a.base_url, max_attempts=3, timeout_s=5)},
                           base_urls={"stub": [dead, a.base_url, b.base_url]})
        for k in range(6):
            with affinity(f"s{k}"):
                for _ in range(2):
                    assert (await client.chat(SPEC, MSGS)).text
        assert len(a.requests) + len(b.requests) == 12


async def test_nested_streams_keep_their_replica_until_the_outer_block_ends():
    with StubServer() as a, StubServer() as b:
        client = LLMClient({"stub": OpenAIEndpoint(base_url=a.base_url)}, base_urls={"stub": [a.base_url, b.base_url]})
        with affinity("conversation"):
            for turn in range(3):
                for arm in ("x", "y"):
                    with affinity(f"conversation|{arm}"):  # exits after each call; the place stays
                        await client.chat(SPEC, [{"role": "user", "content": f"{arm} {turn}"}])
        seen = {i: {r.body["messages"][0]["content"].split()[0] for r in s.requests} for i, s in enumerate((a, b))}
        assert sorted(map(sorted, seen.values())) == [["x"], ["y"]]  # one stream per replica, all turns
        ep = client._endpoint("stub")
        assert not ep.sticky and all(r.keys == 0 for r in ep.replicas)  # released with the conversation


async def test_a_200_with_no_choices_is_retried_then_a_failed_call_not_a_crash(server):
    server.add_fault(Fault(kind="empty_choices"))
    client = client_for(server, max_attempts=3)
    assert (await client.chat(SPEC, MSGS)).text  # retried, then answered
    server.add_fault(*[Fault(kind="empty_choices")] * 3)
    with pytest.raises(LLMError) as info:
        await client.chat(SPEC, MSGS)
    assert "no choices" in str(info.value) and info.value.attempts == 3
    assert info.value.call.status == "error"


async def test_an_api_key_echoed_by_the_server_is_scrubbed_from_errors_and_records(monkeypatch):
    secret = "sk-test-7f3a9c1e5b2d4f60"
    monkeypatch.setenv("SIMLAB_TEST_SECRET_KEY", secret)
    with StubServer(api_key="the-right-key") as server:
        cfg = OpenAIEndpoint(base_url=server.base_url, api_key_env="SIMLAB_TEST_SECRET_KEY", max_attempts=1)
        client = LLMClient({"stub": cfg})
        with pytest.raises(LLMError) as info:
            await client.chat(SPEC, MSGS)
    text = str(info.value)
    assert secret not in text and "[redacted]" in text  # the stub echoed "Bearer <key>" in its 401
    call = info.value.call
    assert secret not in (call.error or "") and "[redacted]" in (call.error or "")


def _module_state() -> dict[str, object]:
    """A copy of every container held at module level in the client layer's modules."""
    import copy
    import importlib
    import pkgutil

    import simlab.llm

    out: dict[str, object] = {}
    for info in pkgutil.iter_modules(simlab.llm.__path__, "simlab.llm."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, (dict, set, list, frozenset, tuple)) and not name.startswith("__"):
                out[f"{info.name}.{name}"] = copy.copy(value)
    return out


async def test_two_clients_redact_only_their_own_keys_and_share_no_state(monkeypatch):
    key_a, key_b = "sk-client-a-11111111aaaa", "sk-client-b-22222222bbbb"
    monkeypatch.setenv("SIMLAB_TEST_KEY_A", key_a)
    monkeypatch.setenv("SIMLAB_TEST_KEY_B", key_b)
    before = _module_state()
    with StubServer(api_key="the-right-key") as server:  # answers 401 quoting the key it was sent
        clients = {env: LLMClient({"stub": OpenAIEndpoint(base_url=server.base_url, api_key_env=env, max_attempts=1)})
                   for env in ("SIMLAB_TEST_KEY_A", "SIMLAB_TEST_KEY_B")}
        errors = {}
        for env, client in clients.items():
            with pytest.raises(LLMError) as info:
                await client.chat(SPEC, MSGS)
            errors[env] = str(info.value)
            await client.aclose()
    a, b = clients["SIMLAB_TEST_KEY_A"], clients["SIMLAB_TEST_KEY_B"]
    assert key_a not in errors["SIMLAB_TEST_KEY_A"] and "[redacted]" in errors["SIMLAB_TEST_KEY_A"]
    assert key_b not in errors["SIMLAB_TEST_KEY_B"] and "[redacted]" in errors["SIMLAB_TEST_KEY_B"]
    # each client knows its own key only
    assert a._redact(f"{key_a} {key_b}") == f"[redacted] {key_b}"
    assert b._redact(f"{key_a} {key_b}") == f"{key_a} [redacted]"
    assert _module_state() == before  # creating and using clients left no trace at module level


def _completion(**message: object) -> str:
    import json

    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m1",
                       "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", **message}}]})


# every shape of an HTTP 200 that is not a readable chat completion
BROKEN_REPLIES = {
    "empty choices": '{"id": "x", "object": "chat.completion", "created": 0, "model": "m1", "choices": []}',
    "no choices key": '{"id": "x", "object": "chat.completion", "created": 0, "model": "m1"}',
    "choices not a list": '{"id": "x", "object": "chat.completion", "created": 0, "model": "m1", "choices": "A"}',
    "choice without message": '{"id": "x", "object": "chat.completion", "created": 0, "model": "m1", '
                              '"choices": [{"index": 0, "finish_reason": "stop"}]}',
    "null content": _completion(content=None),
    "content of the wrong type": _completion(content=42),
    "content as a list": _completion(content=[{"type": "text", "text": "hi"}]),
    "truncated JSON": _completion(content="hello")[:40],
    "not JSON at all": "<html>502 bad gateway</html>",
    "an error object with status 200": '{"error": {"message": "model overloaded", "type": "server_error"}}',
    "JSON null": "null",
    "a JSON list": "[]",
}


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # litellm on a non-text content
@pytest.mark.parametrize("shape", list(BROKEN_REPLIES))
async def test_every_broken_reply_shape_is_retried_then_a_failed_call_never_a_crash(server, shape):
    body = BROKEN_REPLIES[shape]
    client = client_for(server, max_attempts=2)
    server.add_fault(Fault(kind="raw", body=body))
    assert (await client.chat(SPEC, MSGS)).text  # one broken reply: retried, then answered
    server.add_fault(*[Fault(kind="raw", body=body)] * 2)
    with pytest.raises(LLMError) as info:
        await client.chat(SPEC, MSGS)
    assert info.value.attempts == 2 and info.value.call.status == "error", shape


async def test_a_schema_retry_gets_its_own_transient_retries(server):
    # each request of a structured call has max_attempts for transient failures, whatever the
    # schema attempts before it used
    server.add_fault(Fault(kind="schema_violation"), Fault(status=500), Fault(status=500))
    client = client_for(server, max_attempts=3)
    res = await client.structured(SPEC, MSGS, Verdict)
    assert res.value.label in ("yes", "no") and res.call.attempts == 4
    assert [r.status for r in server.requests] == [200, 500, 500, 200]


async def test_a_200_that_is_not_json_by_its_content_type_is_retried_then_failed_with_why(server):
    # such a body is read as text, not parsed
    page = Fault(kind="raw", body="<html>gateway</html>", content_type="text/html")
    client = client_for(server, max_attempts=2)
    server.add_fault(page)
    assert (await client.chat(SPEC, MSGS)).text
    server.add_fault(page, page)
    with pytest.raises(LLMError, match="not a JSON object") as info:
        await client.chat(SPEC, MSGS)
    assert info.value.attempts == 2


async def test_a_reply_cut_off_mid_body_is_retried_then_failed_with_why(server):
    # the server sends half a 200 and drops the connection: a connection failure, retried
    cut = Fault(kind="truncated")
    client = client_for(server, max_attempts=2)
    server.add_fault(cut)
    res = await client.chat(SPEC, MSGS)
    assert res.text and res.call.attempts == 2
    # every attempt cut and nothing whole in between for the endpoint's window: the server is failing
    server.add_fault(*[cut] * 200)
    client = client_for(server, max_attempts=2, dead_after_s=0.5)
    with pytest.raises(BackendUnavailable, match=r"refused or dropped, \d+ attempts.*the reply was cut off"):
        await client.chat(SPEC, MSGS)


async def test_the_reply_is_read_from_its_json_as_the_server_sent_it(server):
    # the client reads the completion's JSON itself (no model class of it): text, finish reason,
    # the serving model's name and the token counts, and a reply cut at max_tokens says so
    body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "lora-7",
                       "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                       "choices": [{"index": 0, "finish_reason": "length",
                                    "message": {"role": "assistant", "content": '{"label": "ye'}}]})
    server.add_fault(*[Fault(kind="raw", body=body)] * 3)
    client = client_for(server)
    with pytest.raises(StructuredOutputError) as info:
        await client.structured(SPEC, MSGS, Verdict)
    call = info.value.call
    assert call.served_model == "lora-7" and (call.prompt_tokens, call.completion_tokens) == (33, 9)
    assert all("cut off at max_tokens" in why for why in call.schema_failures), call.schema_failures
    sent = server.requests[0].body  # the request went out as built: messages and schema untouched
    assert sent["messages"] == MSGS and sent["response_format"]["json_schema"]["schema"]["required"] == ["label", "score"]


async def test_the_client_records_every_call_with_its_context_even_concurrent_and_failed(server):
    from simlab.llm import call_context, recording

    server.add_fault(*[Fault(status=500, match="arm B")] * 5)
    client = client_for(server, max_attempts=2)

    async def arm(name: str) -> None:
        with call_context(role="arm", arm=name, instrument="reply"):
            try:
                await client.chat(SPEC, [{"role": "user", "content": f"arm {name}"}])
            except LLMError:
                pass  # a failed generation is still a recorded call

    with recording() as outer, call_context(conversation_id="c1"):
        with call_context(role="simulator", instrument="opening"):
            await client.chat(SPEC, MSGS)
        with recording() as inner:  # tasks started inside a block inherit its sinks and labels
            await asyncio.gather(arm("A"), arm("B"))
    assert len(outer) == 3 and len(inner) == 2
    assert outer[0].role == "simulator" and outer[0].instrument == "opening" and outer[0].conversation_id == "c1"
    by_arm = {c.arm: c for c in inner}
    assert by_arm["A"].status == "ok" and by_arm["A"].role == "arm" and by_arm["A"].conversation_id == "c1"
    assert by_arm["B"].status == "error" and by_arm["B"].attempts == 2 and "gave up" in by_arm["B"].error
    await client.chat(SPEC, MSGS)  # outside any recording: nothing collects it
    assert len(outer) == 3



def test_the_pacer_shrinks_its_bound_while_the_loop_lags_and_grows_it_back():
    # on a virtual clock: the loop's lag is what the test makes it, not what the machine has
    from simlab.llm.pacing import Pacer

    async def main(loop: VirtualClockLoop) -> None:
        pacer = Pacer(loop, start=64)
        busy = True
        most = 0

        async def hog() -> None:  # another part of the program keeps the loop busy, 150 ms at a time
            while busy:
                loop.block(pacer.PERIOD + 2 * pacer.TARGET)  # every tick due meanwhile runs late
                await asyncio.sleep(0)

        async def call() -> None:
            nonlocal most
            async with pacer:
                most = max(most, pacer.active)
                await asyncio.sleep(0.05)

        hogger = asyncio.ensure_future(hog())
        await asyncio.gather(*(call() for _ in range(300)))
        busy = False
        await hogger
        assert pacer.lags and min(pacer.lags) > pacer.TARGET  # the lag the hog made, seen by every tick
        assert pacer.lowest == pacer.MIN and most == 64  # the bound came down from where it started
        assert pacer.active == 0 and not pacer.waiters
        low = pacer.limit
        most = 0
        await asyncio.gather(*(call() for _ in range(3000)))  # no lag, calls waiting: it grows again
        assert max(pacer.lags[-10:]) < 1e-9 and pacer.limit > 2 * low and most > 2 * low
        assert pacer.active == 0 and not pacer.waiters

    run_virtual(main)


def test_a_garbage_collection_pause_is_not_taken_for_congestion():
    import gc

    from simlab.llm.pacing import Pacer

    async def main(loop: VirtualClockLoop) -> None:
        pacer = Pacer(loop, start=64)
        pause = pacer.PERIOD + 2 * pacer.TARGET  # as long as the hog's pauses above
        pausing = False

        def collection_pause(phase: str, info: dict) -> None:  # runs before the pacer's own callback
            if phase == "stop" and pausing:
                loop.block(pause)  # the collection held the loop

        collecting = True

        async def calls() -> None:
            while collecting:
                async with pacer:
                    await asyncio.sleep(0.02)

        async def collect() -> None:  # full collections, each blocking the loop, while calls are in progress
            nonlocal collecting, pausing
            await asyncio.sleep(0.05)
            for _ in range(8):
                await asyncio.sleep(0.03)
                pausing = True
                try:
                    gc.collect()
                finally:
                    pausing = False
            collecting = False

        gc.callbacks.insert(0, collection_pause)
        try:
            await asyncio.gather(collect(), *(calls() for _ in range(100)))
        finally:
            gc.callbacks.remove(collection_pause)
        assert pacer.gc_s == pytest.approx(8 * pause)  # the pauses happened while it ticked, and were counted
        assert max(pacer.lags) < pacer.TARGET and pacer.lowest == 64  # and never shrank the bound
        await asyncio.sleep(3 * pacer.PERIOD)  # the next tick finds it idle
        assert not pacer.ticking and pacer._on_gc not in gc.callbacks  # no callback left behind

    run_virtual(main)


def test_a_call_cancelled_while_it_waits_for_the_pacer_gives_back_nothing():
    # on a virtual clock: no tick (one period away) changes the bound while the test looks
    from simlab.llm.pacing import Pacer

    async def main(loop: VirtualClockLoop) -> None:
        pacer = Pacer(loop, start=8)
        release = asyncio.Event()

        async def call() -> None:
            async with pacer:
                await release.wait()

        tasks = [asyncio.ensure_future(call()) for _ in range(20)]
        await asyncio.sleep(0.01)
        assert pacer.active == 8 and len(pacer.waiters) == 12
        for t in tasks[10:]:
            t.cancel()
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert pacer.active == 0 and not pacer.waiters

    run_virtual(main)


async def test_a_call_that_times_out_while_the_server_answers_others_fails_alone(server):
    # under random faults one request can time out every attempt while the server is fine: that
    # call fails (its session is recorded with the reason), the run is not stopped
    server.add_fault(*[Fault(kind="delay", delay=5, match="the slow one")] * 3)
    client = client_for(server, max_attempts=3, timeout_s=0.4)
    done = asyncio.Event()

    async def others() -> int:
        n = 0
        while not done.is_set():
            await client.chat(SPEC, MSGS)
            n += 1
            await asyncio.sleep(0.02)
        return n

    async def slow() -> BaseException | None:
        try:
            await client.chat(SPEC, [{"role": "user", "content": "the slow one"}])
        except Exception as exc:  # noqa: BLE001 - the test looks at what was raised
            return exc
        finally:
            done.set()
        return None

    exc, answered = await asyncio.gather(slow(), others())
    assert answered > 3
    assert isinstance(exc, LLMError) and not isinstance(exc, BackendUnavailable), exc
    assert "gave up after 3 attempts" in str(exc) and "Timeout" in str(exc)


async def test_a_litellm_endpoint_goes_through_litellm_with_the_same_retries_and_records(server):
    # kind = "litellm": the model id is litellm's ("openai/<name>" reaches any OpenAI-compatible server)
    server.add_fault(Fault(status=503, retry_after=0.1))
    client = LLMClient({"stub": LitellmEndpoint(base_url=server.base_url, timeout_s=5)})
    _opened.append(client)
    spec = ModelSpec(endpoint="stub", model="openai/m1", sampling=SamplingConfig(max_tokens=20))
    res = await client.chat(spec, MSGS)
    assert res.text and res.call.attempts == 2 and res.call.status == "ok"
    assert server.requests[-1].model == "m1"  # litellm stripped its provider prefix

    class Mood(BaseModel):
        score: int = Field(ge=0, le=10)

    got = await client.structured(spec, MSGS, Mood)
    assert 0 <= got.value.score <= 10


# -- dead means dead: the endpoint's window, not one call's retries ---------------------------------


async def test_calls_in_flight_when_the_server_dies_wait_for_the_window_then_stop_the_run_not_fail():
    # the server answers, then is gone (connections refused): every call in flight ends with
    # BackendUnavailable about one window after the last reply, none as a failed call
    server = StubServer(delay=0.3).start()
    client = LLMClient({"stub": OpenAIEndpoint(base_url=server.base_url, max_attempts=2, timeout_s=2,
                                               dead_after_s=1.5, max_in_flight=8)})
    _opened.append(client)
    await asyncio.gather(*(client.chat(SPEC, MSGS) for _ in range(8)))
    calls = [asyncio.ensure_future(client.chat(SPEC, MSGS)) for _ in range(8)]
    await asyncio.sleep(0.1)
    server.die()
    t0 = time.monotonic()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    took = time.monotonic() - t0
    server.stop()
    dead = [o for o in outcomes if isinstance(o, BackendUnavailable)]
    assert not [o for o in outcomes if isinstance(o, LLMError)], outcomes  # no call blamed on its session
    assert dead and all("refused or dropped" in str(o) and "dead_after_s = 1.5" in str(o) for o in dead)
    assert 1.0 <= took < 3.5, took  # about the window after the last usable reply


async def test_a_server_that_comes_back_within_the_window_answers_the_calls_that_waited():
    with StubServer() as first:
        port = first.port
        client = LLMClient({"stub": OpenAIEndpoint(base_url=first.base_url, max_attempts=1, dead_after_s=5)})
        _opened.append(client)
        assert (await client.chat(SPEC, MSGS)).text
    waiting = asyncio.ensure_future(client.chat(SPEC, MSGS))  # its one attempt is refused at once
    await asyncio.sleep(1.0)
    assert not waiting.done()  # probing, not failed
    with StubServer(port=port) as again:
        result = await asyncio.wait_for(waiting, 10)
        assert result.text and again.requests and result.call.attempts > 1


async def test_a_server_that_never_answers_in_a_usable_shape_stops_with_what_it_returned():
    garbage = Fault(kind="raw", body='{"detail": "Not Found: sk-secret-4242 route /v1/chat"}')
    with StubServer() as server:
        server.add_fault(*[garbage] * 10_000)
        client = client_for(server, max_attempts=2, dead_after_s=1.0, max_in_flight=4)
        t0 = time.monotonic()
        outcomes = await asyncio.gather(*(client.chat(SPEC, MSGS) for _ in range(4)), return_exceptions=True)
    took = time.monotonic() - t0
    assert all(isinstance(o, BackendUnusable) for o in outcomes), outcomes  # no call failed on its own
    text = str(outcomes[0])
    assert f"endpoint 'stub' ({server.base_url}) answers, but never in a usable shape" in text
    assert "nothing usable came back from it for" in text and "the reply has no choices" in text
    assert "sk-secret-4242" not in text  # a key-shaped string in the reply is not repeated
    assert "run the same command again" in text and "OpenAI-compatible /v1 address" in text
    assert 1.0 <= took < 4.0, took

