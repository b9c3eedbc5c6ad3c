"""A scripted OpenAI-compatible chat-completions server for tests, on 127.0.0.1.

It speaks the same HTTP as vLLM or llama.cpp's server, so tests exercise the real
client path (a JSON POST over HTTP, or litellm). Replies are scripted per model alias; a
structured-output request (``response_format`` with a schema, in either dialect) is
answered with JSON generated from the schema. Fault knobs: status codes (429 with
Retry-After, 500, 503), delays, malformed JSON, schema-violating JSON and replies cut off.

Examples:
    >>> with StubServer() as server:           # doctest: +SKIP
    ...     server.add_fault(Fault(status=429, retry_after=0.2))
    ...     print(server.base_url)             # http://127.0.0.1:PORT/v1

    $ python -m simlab.testing --port 8811 --delay 0.2
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

__all__ = ["FAULT_KINDS", "Fault", "Latency", "RequestLog", "StubServer", "generate_from_schema"]

Script = Callable[[dict[str, Any]], str | None]
Breakdown = Literal["exit", "hang", "503", "malformed"]
FaultKind = Literal["5xx", "429", "timeout", "malformed"]
FAULT_KINDS: tuple[FaultKind, ...] = ("5xx", "429", "timeout", "malformed")


@dataclass
class Latency:
    """A loaded GPU fleet's reply time: ``base_s`` + ``per_token_s`` × completion tokens, times a
    uniform factor in [1 - jitter, 1 + jitter]."""

    base_s: float = 2.0
    per_token_s: float = 0.015
    jitter: float = 0.2

    def seconds(self, completion_tokens: int, rng: random.Random) -> float:
        factor = 1.0 + rng.uniform(-self.jitter, self.jitter) if self.jitter else 1.0
        return max(0.0, (self.base_s + self.per_token_s * completion_tokens) * factor)


@dataclass
class Fault:
    """One injected fault, consumed by the next matching request.

    kind: ``status`` answers ``status`` (with ``Retry-After`` when ``retry_after`` is set);
    ``malformed_json`` returns content that is not JSON; ``schema_violation`` returns JSON
    that breaks the requested schema; ``delay`` sleeps ``delay`` seconds then answers normally;
    ``empty_choices`` answers 200 with an empty ``choices`` list; ``raw`` answers 200 with
    ``body`` as it is (any shape a broken server could send); ``truncated`` starts a 200 reply
    and drops the connection partway through its body (a server that died mid-reply).
    ``model`` restricts the fault to one alias (None: any); ``match`` to requests whose JSON
    body contains that substring (e.g. one arm's system prompt).
    """

    kind: Literal["status", "malformed_json", "schema_violation", "delay", "empty_choices", "raw",
                  "truncated"] = "status"
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0
    model: str | None = None
    match: str | None = None
    body: str = ""
    """The reply body for ``kind="raw"``, and for ``kind="status"`` instead of its error object
    (sent verbatim, as ``content_type``)."""
    content_type: str = "application/json"


@dataclass
class RequestLog:
    """What the server saw: the body, when it started and finished, and what it answered."""

    body: dict[str, Any]
    model: str
    started: float
    finished: float = 0.0
    status: int = 200
    in_flight_at_start: int = 0


_HANG = Fault(kind="delay")
_RANDOM_FAULTS: dict[FaultKind, Fault] = {
    "5xx": Fault(status=500),
    "429": Fault(status=429, retry_after=1.0),
    "timeout": _HANG,
    "malformed": Fault(kind="malformed_json"),
}


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asks for, in either dialect (json_schema or json_object+schema)."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    if fmt.get("type") == "json_object":
        return fmt.get("schema") or {}
    return None


def generate_from_schema(schema: dict[str, Any], rng: random.Random, root: dict[str, Any] | None = None) -> Any:
    """A value that satisfies ``schema`` (the subset pydantic emits: objects, enums, ranges, refs)."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        return generate_from_schema(root.get("$defs", {})[name], rng, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return generate_from_schema(options[0], rng, root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: generate_from_schema(v, rng, root) for k, v in props.items()}
    if kind == "array":
        n = max(schema.get("minItems", 1), min(schema.get("maxItems", 2), 2))
        return [generate_from_schema(schema.get("items", {}), rng, root) for _ in range(n)]
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", lo + 100))
        if kind == "integer":
            return rng.randint(int(lo), int(hi))
        return round(rng.uniform(float(lo), float(hi)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if "pattern" in schema:
        # the patterns simlab sends are amounts like "7.50": try amounts, then say what is missing
        for _ in range(2000):
            amount = f"{rng.uniform(0, 100):.2f}" if rng.random() < 0.5 else f"{rng.uniform(0, 10):.2f}"
            if re.fullmatch(schema["pattern"], amount):
                return amount
        raise ValueError(f"the stub cannot make a string matching {schema['pattern']!r}")
    n_min = schema.get("minLength", 0)
    text = "A stub message about the topic at hand."
    return text if len(text) >= n_min else text + "." * (n_min - len(text))


def _violating(schema: dict[str, Any]) -> Any:
    """JSON that parses but breaks ``schema`` (wrong type for every declared property)."""
    props = schema.get("properties") or {}
    if props:
        return {k: {"unexpected": True} for k in props}
    return ["not", "the", "schema"]


class StubServer:
    """A real aiohttp server on 127.0.0.1 in a background thread (usable from sync or async tests)."""

    def __init__(
        self,
        *,
        script: Script | None = None,
        replies: dict[str, list[str]] | None = None,
        delay: float = 0.0,
        seed: int = 0,
        port: int = 0,
        api_key: str | None = None,
        breakdown: tuple[int, Breakdown] | None = None,
        latency: Latency | None = None,
        fault_rates: dict[FaultKind, float] | None = None,
        keep_log: bool = True,
        deterministic: bool = False,
        record: str | None = None,
        cached_tokens: int = 0,
    ) -> None:
        self.script = script
        self.cached_tokens = cached_tokens
        """Prompt tokens each reply says it read from a prompt cache (``usage.prompt_tokens_details``,
        at most the prompt's), as hosted APIs report cache hits."""
        self.breakdown = breakdown
        """(n, how): after n chat requests the server breaks down for good: ``exit`` ends the
        process (run the stub as its own process), ``hang`` never answers, ``503`` answers 503,
        ``malformed`` answers 200 with a body that is not a completion (a server in no usable shape)."""
        self.latency = latency
        """Reply time as a function of the reply's length (added to ``delay``); None: no wait."""
        self.fault_rates: dict[FaultKind, float] = dict(fault_rates or {})
        """Share of chat requests that get each random fault: ``5xx`` (HTTP 500), ``429`` (with
        Retry-After: 1), ``timeout`` (no reply for an hour), ``malformed`` (content that is not JSON)."""
        if sum(self.fault_rates.values()) > 1 or any(r < 0 for r in self.fault_rates.values()):
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1, got {self.fault_rates}")
        self.deterministic = deterministic
        """Each reply is a function of the request body alone (not of the order requests came in),
        so a run split over processes (``--shard``) gets the answers one process would."""
        self.record = open(record, "a", encoding="utf-8") if record else None  # noqa: SIM115 - closed in stop()
        """Append every chat request's body to this JSONL file (e.g. to replay a run's calls)."""
        self.keep_log = keep_log
        """False: count requests without keeping their bodies (long benchmarks)."""
        self.n_requests = 0
        self.status_counts: dict[int, int] = {}
        self.replies = {k: deque(v) for k, v in (replies or {}).items()}
        self.delay = delay
        self.api_key = api_key
        self.port = port
        self.faults: deque[Fault] = deque()
        self.requests: list[RequestLog] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self.dead = False
        """Set by ``die``: the server answers nothing more."""

    # -- knobs -------------------------------------------------------------------------
    def add_fault(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _take_fault(self, model: str, body: dict[str, Any]) -> Fault | None:
        if self.fault_rates:
            u = self._rng.random()
            for kind in FAULT_KINDS:
                u -= self.fault_rates.get(kind, 0.0)
                if u < 0:
                    return _RANDOM_FAULTS[kind]
        if not self.faults:
            return None
        text = json.dumps(body) if any(f.match for f in self.faults) else ""
        with self._lock:
            for i, fault in enumerate(self.faults):
                if (fault.model is None or fault.model == model) and (fault.match is None or fault.match in text):
                    del self.faults[i]
                    return fault
        return None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- HTTP --------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/stats", self._stats)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        """What the server has seen so far (for benchmarks that run it as its own process)."""
        return web.json_response({"requests": self.n_requests, "max_in_flight": self.max_in_flight,
                                  "in_flight": self._in_flight, "status": self.status_counts})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        names = sorted(self.replies) or ["stub"]
        return web.json_response({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            # like a careless server, the message echoes the credential it was sent
            got = request.headers.get("Authorization", "(none)")
            return web.json_response({"error": {"message": f"bad api key: {got}"}}, status=401)
        if self.dead and request.transport is not None:
            request.transport.close()  # a connection opened before the server died
        body = await request.json()
        model = str(body.get("model", ""))
        if self.breakdown is not None and self.n_requests >= self.breakdown[0]:
            how = self.breakdown[1]
            if how == "exit":
                os._exit(3)  # a backend process that dies: connections are refused from now on
            if how == "hang":
                await asyncio.Event().wait()
            if how == "malformed":
                return web.Response(text='{"detail": "Not Found", "path": "/v1/chat/completions"', status=200,
                                    content_type="application/json")
            return web.json_response({"error": {"message": "injected breakdown: 503"}}, status=503)
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self.n_requests += 1
            log = RequestLog(body=body if self.keep_log else {}, model=model, started=time.time(),
                             in_flight_at_start=self._in_flight)
            if self.keep_log:
                self.requests.append(log)
            if self.record is not None:
                self.record.write(json.dumps(body) + "\n")
        try:
            response = await self._answer(body, model, log, request)
            if self.dead and request.transport is not None:
                request.transport.close()  # died while this request was in flight: its connection is lost
        finally:
            with self._lock:
                self._in_flight -= 1
            log.finished = time.time()
        log.status = response.status
        with self._lock:
            self.status_counts[response.status] = self.status_counts.get(response.status, 0) + 1
        return response

    async def _answer(self, body: dict[str, Any], model: str, log: RequestLog,
                      request: web.Request) -> web.StreamResponse:
        fault = self._take_fault(model, body)
        delay = self.delay + (fault.delay if fault else 0.0)
        if delay:
            await asyncio.sleep(delay)
        if fault is _HANG:
            await asyncio.sleep(3600)  # the client's timeout ends it
        if fault and fault.kind == "status":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            if fault.body:  # a server's own error text (e.g. one quoting the request)
                return web.Response(text=fault.body, status=fault.status, headers=headers,
                                    content_type=fault.content_type)
            err = {"error": {"message": f"injected {fault.status}", "type": "stub_fault", "code": fault.status}}
            return web.json_response(err, status=fault.status, headers=headers)
        if fault and fault.kind == "raw":
            return web.Response(text=fault.body, status=200, content_type=fault.content_type)
        if fault and fault.kind == "truncated":  # 1,000 bytes promised, 41 sent, connection gone
            cut = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                          "Content-Length": "1000"})
            await cut.prepare(request)
            await cut.write(b'{"id": "chatcmpl-stub-cut", "choices": [{')
            assert request.transport is not None
            request.transport.close()
            return cut
        if fault and fault.kind == "empty_choices":  # an HTTP 200 with nothing in it
            return web.json_response({"id": "chatcmpl-stub-empty", "object": "chat.completion",
                                      "created": int(time.time()), "model": model, "choices": []})
        schema = _schema_of(body)
        if fault and fault.kind == "malformed_json":
            content = '{"this is": not json'
        elif fault and fault.kind == "schema_violation":
            content = json.dumps(_violating(schema or {}))
        else:
            content = self._content(body, model, schema)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion_tokens = max(1, len(content.split()))
        if self.latency is not None:
            await asyncio.sleep(self.latency.seconds(completion_tokens, self._rng))
        return web.json_response(
            {
                "id": f"chatcmpl-stub-{self.n_requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    **({"prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt_tokens)}}
                       if self.cached_tokens else {}),
                },
            }
        )

    def _content(self, body: dict[str, Any], model: str, schema: dict[str, Any] | None) -> str:
        if self.script is not None:
            scripted = self.script(body)
            if scripted is not None:
                return scripted
        with self._lock:
            queue = self.replies.get(model)
            if queue:
                reply = queue.popleft()
                queue.append(reply)  # cycle, so a script never runs dry
                return reply
            if self.deterministic:
                digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
                if schema is not None:
                    return json.dumps(generate_from_schema(schema, random.Random(digest)))
                return f"Reply {digest[:8]} from {model}: here is a considered answer to your message."
            if schema is not None:
                return json.dumps(generate_from_schema(schema, self._rng))
            n = self.n_requests
        return f"Reply {n} from {model}: here is a considered answer to your message."

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> StubServer:
        self._thread = threading.Thread(target=self._serve, name="simlab-stub-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("stub server did not start within 10 s")
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._runner = web.AppRunner(self._app(), access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def die(self) -> None:
        """Stop answering at once, as a server process that died: the port refuses connections,
        requests in flight and on open connections lose them. ``stop`` still ends the thread."""
        self.dead = True
        if self._loop is not None and self._runner is not None:
            runner = self._runner

            def close() -> None:
                for site in runner.sites:
                    server = getattr(site, "_server", None)
                    if server is not None:
                        server.close()

            self._loop.call_soon_threadsafe(close)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
        if self.record is not None:
            self.record.close()
            self.record = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
