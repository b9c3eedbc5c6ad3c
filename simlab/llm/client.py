"""The async client layer: every model call simlab makes goes through ``LLMClient``.

Calls go over the OpenAI-compatible HTTP API (a POST of the request's JSON, the reply's JSON
read back) on aiohttp, so the same code reaches a GPU vLLM server, a hosted API or the
embedded llama.cpp server; an endpoint of ``kind = "litellm"`` goes through ``litellm``
instead, to any provider it supports (Anthropic, Bedrock, Vertex, …). The direct route costs
the least CPU per call of the routes measured (the openai SDK's ``post()`` and ``create()``,
litellm; figures in docs/benchmarks.md), and at 1,000 sessions in flight the client's CPU is
what limits a run.
Per endpoint: a rate limit (``asyncio-throttle``) and a bound on requests in flight.
Transient failures (429 honouring Retry-After, 5xx, timeouts, connection errors) are
retried by ``tenacity`` with exponential backoff and jitter inside a total deadline.
Structured replies are requested in the dialect the backend speaks, validated against
a pydantic model, retried on a schema failure, then raised as ``StructuredOutputError``
carrying the raw text. Every call, successful or not, yields a ``CallRecord``.

The client knows nothing of personas, protocol or statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from asyncio_throttle import Throttler
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from simlab.errors import BackendUnavailable, LLMError, StructuredOutputError
from simlab.llm.config import Dialect, EndpointConfig, ModelSpec, SamplingConfig, api_key
from simlab.records import LLMCallRecord
from simlab.seeds import sampling_seed

T = TypeVar("T", bound=BaseModel)
Status = Literal["ok", "error", "schema_error"]

_litellm: Any = None
_logger = logging.getLogger("simlab.llm")


def _lib() -> Any:
    """Import litellm once, quietly (it is slow to import; keep ``import simlab`` fast)."""
    global _litellm
    if _litellm is None:
        # litellm fetches a model cost map over the network at import unless told not to (offline: seconds of
        # retries and warnings); set here, when simlab first needs litellm, so importing simlab changes nothing
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True
        # litellm logs a warning whenever a new event loop reuses its logging worker
        logging.getLogger("LiteLLM").setLevel(logging.ERROR)
        litellm.drop_params = False
        litellm.telemetry = False
        _litellm = litellm
    return _litellm


@dataclass
class CallRecord:
    """Usage accounting for one logical call (all its attempts)."""

    endpoint: str
    model: str
    prompt_name: str | None = None
    prompt_hash: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    status: Status = "ok"
    error: str | None = None
    tag: dict[str, Any] = field(default_factory=dict)
    schema_failures: list[str] = field(default_factory=list)
    """Why each structured attempt before the last was rejected (diagnostics for retries)."""
    served_model: str | None = None
    """The model name the server's reply gives (vLLM: the base model's or the LoRA adapter's)."""


    def to_record(self, fields: Mapping[str, Any]) -> LLMCallRecord:
        """The call as the run store keeps it: this accounting plus who made it (``call_context``)."""
        return LLMCallRecord(
            conversation_id=fields.get("conversation_id"), role=fields.get("role", "simulator"),
            arm=fields.get("arm"), instrument=fields.get("instrument"), model=self.model, endpoint=self.endpoint,
            prompt_name=self.prompt_name, prompt_hash=self.prompt_hash, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens, latency_s=round(self.latency_s, 4),
            attempts=max(1, self.attempts), status=self.status, error=self.error,
        )


# Who is calling (role, arm, instrument, conversation_id) and where the records go. Context
# variables, as tasks started inside a block inherit them: the four arms' replies of a turn,
# made concurrently, land in their session's list like its sequential calls.
_call_fields: ContextVar[Mapping[str, Any] | None] = ContextVar("simlab_call_fields", default=None)
_sinks: ContextVar[tuple[list[LLMCallRecord], ...]] = ContextVar("simlab_call_sinks", default=())


@contextmanager
def call_context(**fields: Any) -> Iterator[None]:
    """Label the calls made inside: ``role`` (arm, simulator, judge, summary; default simulator),
    ``arm``, ``instrument``, ``conversation_id``. Nested blocks add to or override the outer labels."""
    token = _call_fields.set({**(_call_fields.get() or {}), **fields})
    try:
        yield
    finally:
        _call_fields.reset(token)


@contextmanager
def recording() -> Iterator[list[LLMCallRecord]]:
    """Collect the ``LLMCallRecord`` of every call made inside (failed calls too), in the order
    they finish. The model layer records its calls itself: callers never copy records by hand."""
    calls: list[LLMCallRecord] = []
    token = _sinks.set((*_sinks.get(), calls))
    try:
        yield calls
    finally:
        _sinks.reset(token)


@dataclass
class ChatResult:
    text: str
    call: CallRecord


@dataclass
class StructuredResult(Generic[T]):
    value: T
    raw_text: str
    call: CallRecord


@functools.lru_cache(maxsize=1024)
def response_format(schema: type[BaseModel], dialect: Dialect) -> dict[str, Any]:
    """The ``response_format`` body field for a pydantic model in a backend's dialect.

    vLLM and OpenAI take ``json_schema``; llama.cpp's server takes ``json_object`` with a
    ``schema`` key (it answers the ``json_schema`` form with a 500, and vLLM ignores a schema
    inside ``json_object``), hence two dialects. Cached per model class (building a JSON schema
    costs more CPU than sending the request); callers must not change the returned dict.
    """
    js = inline_refs(schema.model_json_schema())
    if dialect == "json_object_schema":
        return {"type": "json_object", "schema": _bounded_ints_as_enums(js)}
    return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": js, "strict": False}}


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace ``$ref``s to ``$defs`` by their definitions (small grammar-based decoders such
    as llama.cpp's handle flat schemas most reliably). Recursive models are not supported."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].split("/")[-1]])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _bounded_ints_as_enums(node: Any) -> Any:
    """llama.cpp's grammar ignores minimum/maximum (SmolLM wrote 478 on a 0–100 scale);
    it does enforce enums, so a bounded integer is sent as the list of its values.
    The reply is still validated against the original pydantic model."""
    if isinstance(node, list):
        return [_bounded_ints_as_enums(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _bounded_ints_as_enums(v) for k, v in node.items()}
    lo, hi = out.get("minimum"), out.get("maximum")
    if out.get("type") == "integer" and isinstance(lo, int) and isinstance(hi, int) and 0 <= hi - lo <= 1000:
        out = {k: v for k, v in out.items() if k not in ("type", "minimum", "maximum")}
        out["enum"] = list(range(lo, hi + 1))
    return out


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_structured(text: str, schema: type[T]) -> T:
    """Parse and validate a structured reply (a JSON object, possibly in a ```json fence)."""
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    return schema.model_validate_json(body)


class _Retryable(Exception):
    def __init__(self, cause: BaseException, retry_after: float | None, status: int | None,
                 kind: Literal["connection", "timeout", "status"]) -> None:
        self.cause = cause
        self.retry_after = retry_after
        self.status = status
        self.kind = kind
        super().__init__(str(cause))

    @property
    def unavailable(self) -> bool:
        """The server is not answering at all (as opposed to failing this one request)."""
        return self.kind in ("connection", "timeout") or self.status in (502, 503, 504)


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to backoff


def _classify(exc: BaseException) -> _Retryable | None:
    """Transient failures become ``_Retryable``; anything else is final. The direct route raises
    ``HTTPStatusError``, ``TimeoutError`` and aiohttp's connection errors; litellm's errors
    subclass the openai SDK's."""
    import openai

    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    if _never_connected(exc):
        # litellm reports a refused or reset connection as a 500 InternalServerError, and the
        # aiohttp transport as a connect timeout: the cause in the chain says what happened
        return _Retryable(exc, None, None, "connection")
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return _Retryable(exc, None, None, "timeout")
    if isinstance(exc, (openai.RateLimitError, openai.InternalServerError)) or (
            status is not None and (status == 429 or status >= 500)):
        return _Retryable(exc, _retry_after(exc), status, "status")
    if isinstance(exc, (openai.APIConnectionError, ConnectionError)):
        return _Retryable(exc, None, status, "connection")
    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        # an HTTP 200 whose body is not a JSON completion: a malfunctioning server, like a 5xx
        return _Retryable(exc, None, status, "status")
    if _error_object_in_200(exc):
        # a server that answers 200 with {"error": …} is malfunctioning, not refusing the request
        return _Retryable(exc, None, status, "status")
    return None


def _error_object_in_200(exc: BaseException) -> bool:
    """Whether litellm raised because an HTTP 200 body held an ``error`` object: it converts that
    body into a bare ``Exception`` carrying ``status_code`` and ``message``, found in the chain."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if type(node) is Exception and hasattr(node, "status_code") and hasattr(node, "message"):
            return True
        node = node.__cause__ or node.__context__
    return False


def _never_connected(exc: BaseException) -> bool:
    """Whether the request failed for want of a connection (refused, reset, closed mid-reply),
    found anywhere in the exception's chain of causes."""
    import aiohttp
    import openai

    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, TimeoutError):
            pass  # a read or connect timeout: the server may be slow, not gone
        elif isinstance(node, (ConnectionError, aiohttp.ClientConnectionError)):
            return True  # refused, reset, or closed mid-reply (aiohttp's own errors included)
        elif isinstance(node, openai.APIConnectionError) and not isinstance(node, openai.APITimeoutError):
            return True
        node = node.__cause__ or node.__context__
    return False


# The key of the stream of work a call belongs to (e.g. one arm's thread of a conversation) and
# the key of the unit that owns it (the conversation): a stream's calls stay on one replica of an
# endpoint, whose prompt cache then holds the stream's prefix, until its owner's block ends.
@dataclass(frozen=True)
class _Stream:
    """The affinity key of the calls in a block, and the places its outermost block releases at its end."""

    key: str
    releases: list[Callable[[], None]]


_affinity: ContextVar[_Stream | None] = ContextVar("simlab_affinity", default=None)


@contextmanager
def affinity(key: str | None) -> Iterator[None]:
    """Send the calls made inside (including tasks started inside) to one replica per endpoint.

    A new key goes to the replica with the fewest open keys, so streams of work (not single
    calls) are spread evenly. Nested blocks name streams of the outer block's unit: their
    places are kept until the outermost block ends, then released.
    """
    outer = _affinity.get()
    stream = None if key is None else _Stream(key, outer.releases if outer else [])
    token = _affinity.set(stream)
    try:
        yield
    finally:
        _affinity.reset(token)
        if stream is not None and outer is None:
            for release in stream.releases:
                release()


class _Replica:
    def __init__(self, url: str, in_flight: int) -> None:
        self.url = url
        self.bound = in_flight
        self.in_flight = asyncio.Semaphore(in_flight)
        self.load = 0  # calls waiting for or holding a slot
        self.keys = 0  # open affinity keys placed here
        self.down = False
        self.http: tuple[asyncio.AbstractEventLoop, _HTTP] | None = None  # its session on one event loop


class _Pacer:
    """Admission control on the event loop's lag: the client's own congestion signal.

    With many sessions in flight the client's CPU, not the servers, can limit a run: replies
    arrive faster than the loop processes them, callbacks queue for seconds, and every call's
    latency (and timeout) includes that queue. The pacer checks every ``PERIOD`` how late the
    loop runs a timer and bounds the calls in progress at once (AIMD, as TCP paces a network):
    the bound shrinks by a quarter while the lag is over ``TARGET`` and grows by a tenth while
    the lag is low and calls are waiting. Throughput stays what the CPU allows; the queue moves
    from the loop, where it delays everything, to the pacer, where it costs nothing.
    """

    PERIOD = 0.05
    TARGET = 0.05
    MIN = 8

    def __init__(self, loop: asyncio.AbstractEventLoop, start: int = 64) -> None:
        self.loop = loop
        self.limit = float(start)
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.ticking = False
        self.lags: list[float] = []  # recent lags (seconds), for diagnostics
        self.lowest = self.limit
        self.gc_s = 0.0  # time spent in the garbage collector while ticking
        self._gc_start = 0.0
        self._gc_at_tick = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # on the loop's clock, as the lag it is taken out of
        if phase == "start":
            self._gc_start = self.loop.time()
        else:
            self.gc_s += self.loop.time() - self._gc_start

    def _start_ticking(self) -> None:
        self.ticking = True
        # a collection's pause is not congestion: fewer calls in progress would not shorten it
        # (its length follows the sessions' heap), so it is taken out of the lag
        gc.callbacks.append(self._on_gc)
        self._gc_at_tick = self.gc_s
        nxt = self.loop.time() + self.PERIOD
        self.loop.call_at(nxt, self._tick, nxt)

    def _tick(self, due: float) -> None:
        paused = self.gc_s - self._gc_at_tick
        self._gc_at_tick = self.gc_s
        lag = max(0.0, self.loop.time() - due - paused)
        self.lags = [*self.lags[-99:], lag]
        if lag > self.TARGET:
            self.limit = max(self.MIN, self.limit * 0.75)
            self.lowest = min(self.lowest, self.limit)
        elif self.waiters:
            self.limit = self.limit * 1.1 + 1
        self._wake()
        if self.active or self.waiters:
            nxt = self.loop.time() + self.PERIOD
            self.loop.call_at(nxt, self._tick, nxt)
        else:
            self.ticking = False  # idle: no timer or collector callback left behind
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._on_gc)

    async def __aenter__(self) -> None:
        if not self.ticking:
            self._start_ticking()
        if self.active < self.limit and not self.waiters:
            self.active += 1
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self.waiters.append(fut)
        try:
            await fut  # the waker counted this call in ``active``
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.active -= 1
                self._wake()
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters and self.active < self.limit:
            fut = self.waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)


class HTTPStatusError(Exception):
    """An HTTP error status from an OpenAI-compatible server, with the start of its body."""

    def __init__(self, status_code: int, reason: str, body: str, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers  # e.g. Retry-After of a 429 (case-insensitive)
        super().__init__(f"HTTP {status_code} {reason}: {body[:500]}".rstrip(": "))


class _HTTP:
    """One replica's HTTP session on one event loop: an OpenAI-compatible POST with a JSON body.

    aiohttp directly, not the openai SDK: the SDK's ``post()`` builds an httpx request, cookie
    jar, URL and headers object and a pydantic options model around every call, several times the
    CPU of the POST itself; at 1,000 sessions in flight that difference set the event loop's lag
    and the run's rate (docs/benchmarks.md). The errors are the SDK's cases: ``HTTPStatusError``
    for a status >= 400, ``TimeoutError``, and aiohttp's connection errors (``ConnectionError``
    for a reply cut off).
    """

    def __init__(self, url: str, key: str, connections: int) -> None:
        import ssl

        import aiohttp
        import certifi

        self.url = url.rstrip("/")
        # one connection per request allowed in flight; a 5 s keep-alive as httpx's pool; the CA
        # bundle the SDK uses (certifi), not the system's
        connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=5.0,
                                         ssl=ssl.create_default_context(cafile=certifi.where()))
        self.session = aiohttp.ClientSession(connector=connector, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json",
            "Accept": "application/json", "User-Agent": "simlab"})

    async def post(self, path: str, body: dict[str, Any], timeout: float) -> Any:
        """The reply's JSON (a dict), or its text when the server says it is not JSON."""
        import aiohttp
        from multidict import CIMultiDict

        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            async with self.session.post(self.url + path, data=data,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise HTTPStatusError(resp.status, resp.reason or "", raw.decode(errors="replace"),
                                          CIMultiDict(resp.headers))
                if resp.content_type in ("application/json", "") or resp.content_type.endswith("+json"):
                    return json.loads(raw)  # a malformed body: JSONDecodeError, retried like a 5xx
                return raw.decode(errors="replace")
        except TimeoutError as exc:  # aiohttp's total, connect and read timeouts
            raise TimeoutError(f"no reply within {timeout:g} s ({type(exc).__name__})") from exc
        except aiohttp.ClientPayloadError as exc:  # the connection closed before the body was whole
            raise ConnectionError(f"the reply was cut off: {exc}") from exc

    async def close(self) -> None:
        await self.session.close()


async def _close_at_loop_end(clients: list[Any]) -> AsyncIterator[None]:
    """Closes ``clients`` when the event loop shuts down its async generators (``asyncio.run``
    does, before closing the loop), so a client nobody closed leaves no open connection behind."""
    try:
        yield
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


class _Endpoint:
    def __init__(self, name: str, cfg: EndpointConfig, base_urls: list[str]) -> None:
        self.name = name
        self.cfg = cfg
        self.replicas = [_Replica(url, cfg.in_flight) for url in base_urls]  # in-flight bound per replica
        self.key = api_key(cfg)
        if cfg.api_key_env and len(self.key) >= 4:
            _SECRETS.add(self.key)
        self.sticky: dict[str, _Replica] = {}
        self.last_ok = float("-inf")  # when a reply last came back whole (time.monotonic)
        self.throttle: Throttler | None = None
        if cfg.rate_limit:
            # asyncio-throttle counts whole requests per period: 200/s is 200 per second, while a
            # rate that is not a whole number (0.5/s, 2.5/s) is one request per 1/rate seconds
            whole = float(cfg.rate_limit).is_integer()
            self.throttle = (Throttler(rate_limit=int(cfg.rate_limit), period=1.0) if whole
                             else Throttler(rate_limit=1, period=1.0 / cfg.rate_limit))

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def pick(self) -> _Replica:
        """The affinity key's replica while it answers; else the one that answers with the fewest
        open keys (then the least loaded)."""
        if len(self.replicas) == 1:
            return self.replicas[0]
        current = _affinity.get()
        key = current.key if current else None
        chosen = self.sticky.get(key) if key is not None else None
        if chosen is not None and not chosen.down:
            return chosen
        alive = [r for r in self.replicas if not r.down] or self.replicas  # all down: keep trying
        best = min(alive, key=lambda r: (r.keys, r.load))
        if current is not None:
            if chosen is not None:
                chosen.keys -= 1  # moved off a replica that stopped answering
            else:
                current.releases.append(lambda: self._release(current.key))
            best.keys += 1
            self.sticky[current.key] = best
        return best

    def _release(self, key: str) -> None:
        replica = self.sticky.pop(key, None)
        if replica is not None:
            replica.keys -= 1


class LLMClient:
    """Async client for every model role (arms, simulator, judge, summary).

    Args:
        endpoints: endpoint configs by name.
        base_urls: base URL overrides by endpoint name (e.g. the embedded servers' URLs); a list
            names replicas of one server, among which calls are spread (see ``affinity``).
        on_call: called with the ``LLMCallRecord`` of every call (``recording`` collects them per block).

    Example:
        >>> client = LLMClient({"stub": EndpointConfig(base_url=url)})   # doctest: +SKIP
        >>> (await client.chat(ModelSpec(endpoint="stub", model="m"), msgs)).text  # doctest: +SKIP
    """

    def __init__(
        self,
        endpoints: Mapping[str, EndpointConfig],
        *,
        base_urls: Mapping[str, str | Sequence[str]] | None = None,
        on_call: Callable[[LLMCallRecord], None] | None = None,
    ) -> None:
        self._configs = dict(endpoints)
        self._base_urls = dict(base_urls or {})
        self._endpoints: dict[str, _Endpoint] = {}
        self.on_call = on_call
        self._sessions: dict[asyncio.AbstractEventLoop, list[_HTTP]] = {}
        self._closers: list[AsyncIterator[None]] = []
        self._pacers: dict[asyncio.AbstractEventLoop, _Pacer] = {}

    def _pacer(self) -> _Pacer:
        loop = asyncio.get_running_loop()
        pacer = self._pacers.get(loop)
        if pacer is None:
            for old in [lp for lp in self._pacers if lp.is_closed()]:
                with contextlib.suppress(ValueError):  # a loop closed while its pacer ticked
                    gc.callbacks.remove(self._pacers[old]._on_gc)
                del self._pacers[old]
            pacer = self._pacers[loop] = _Pacer(loop)
        return pacer

    async def _http(self, ep: _Endpoint, replica: _Replica) -> _HTTP:
        """The replica's HTTP session for the running event loop (a session belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if replica.http is not None and replica.http[0] is loop:
            return replica.http[1]
        http = _HTTP(replica.url, ep.key, replica.bound)
        replica.http = (loop, http)
        opened = self._sessions.get(loop)
        if opened is None:
            opened = self._sessions[loop] = []
            closer = _close_at_loop_end(opened)
            await closer.__anext__()
            self._closers.append(closer)
        opened.append(http)
        return http

    async def aclose(self) -> None:
        """Close the HTTP connections this client opened in the running event loop."""
        for http in self._sessions.pop(asyncio.get_running_loop(), []):
            await http.close()
        for ep in self._endpoints.values():
            for replica in ep.replicas:
                replica.http = None

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def schema_attempts(self, endpoint: str) -> int:
        """How many replies a call to ``endpoint`` may take to meet its schema (its config's ``schema_attempts``)."""
        return self._configs[endpoint].schema_attempts

    def replicas(self, endpoint: str) -> int:
        """How many replicas serve ``endpoint`` (work split into that many ``affinity`` streams
        lands one stream per replica)."""
        return len(self._endpoint(endpoint).replicas)

    def _endpoint(self, name: str) -> _Endpoint:
        ep = self._endpoints.get(name)
        if ep is None:
            cfg = self._configs[name]
            given = self._base_urls.get(name) or cfg.urls
            urls = [given] if isinstance(given, str) else list(given or [])
            if not urls and cfg.kind == "litellm":
                urls = [""]  # a hosted provider: litellm knows where it is
            if not urls:
                raise LLMError(f"endpoint {name!r} has no base_url (is the embedded server running?)")
            ep = self._endpoints[name] = _Endpoint(name, cfg, [u.rstrip("/") for u in urls])
        return ep

    def _record(self, record: CallRecord) -> None:
        sinks = _sinks.get()
        if not sinks and self.on_call is None:
            return
        stored = record.to_record(_call_fields.get() or {})
        for sink in sinks:
            sink.append(stored)
        if self.on_call is not None:
            self.on_call(stored)

    @contextmanager
    def _accounting(self, record: CallRecord) -> Iterator[None]:
        """Latency, status and the ``on_call`` report for one logical call, failed or not;
        a raised ``LLMError`` carries its record as ``.call``."""
        start = time.monotonic()
        try:
            yield
        except (LLMError, BackendUnavailable) as exc:
            if record.status == "ok":
                record.status, record.error = "error", str(exc)
            setattr(exc, "call", record)  # noqa: B010 - either error type carries its call record
            raise
        finally:
            record.latency_s = time.monotonic() - start
            self._record(record)

    async def _send(self, ep: _Endpoint, replica: _Replica, kwargs: dict[str, Any], timeout: float) -> Any:
        """One HTTP request; the reply's JSON body (a dict, or the text of a body that is not JSON)."""
        if ep.cfg.kind == "litellm":
            async with self._pacer():
                resp = await _lib().acompletion(
                    api_base=replica.url or None, api_key=ep.key, timeout=timeout, max_retries=0, num_retries=0,
                    # self-served models are not in litellm's price list; a zero custom price skips
                    # its failing lookup, litellm's largest CPU cost per call in a profile
                    input_cost_per_token=0.0, output_cost_per_token=0.0, **kwargs)
            return resp.model_dump()
        http = await self._http(ep, replica)
        if "prompt_embeds" in kwargs:  # the completions endpoint: the prompt is embeddings
            path, body = "/completions", {"prompt": None, **kwargs}
        else:
            path, body = "/chat/completions", kwargs
        async with self._pacer():
            return await http.post(path, body, timeout)

    async def _complete_once(self, ep: _Endpoint, kwargs: dict[str, Any], timeout: float) -> _Reply:
        replica = ep.pick()
        replica.load += 1
        try:
            async with replica.in_flight:
                if ep.throttle is not None:
                    async with ep.throttle:
                        pass  # the throttle spaces request starts; hold it only to take a slot
                try:
                    resp = await self._send(ep, replica, kwargs, timeout)
                except Exception as exc:  # noqa: BLE001 - classified below
                    retryable = _classify(exc)
                    if retryable is None:
                        raise
                    if retryable.kind == "connection" and not replica.down:
                        replica.down = True  # the next attempt goes to another replica, if any
                        if len(ep.replicas) > 1:
                            _logger.warning("endpoint %r: replica %s is not answering (%s); using the others",
                                            ep.name, replica.url, _short(exc, 120))
                    raise retryable from exc
                replica.down = False
                reply = _read_reply(resp)
                if isinstance(reply, str):  # e.g. an HTTP 200 whose choices list is empty: retried like a 5xx
                    raise _Retryable(ValueError(reply), None, None, "status")
                ep.last_ok = time.monotonic()
                return reply
        finally:
            replica.load -= 1

    async def _complete(self, ep: _Endpoint, kwargs: dict[str, Any], record: CallRecord) -> _Reply:
        cfg = ep.cfg
        start = time.monotonic()
        # The first attempt goes without tenacity: most calls need no retry, and each retry loop
        # left objects in reference cycles for the garbage collector, whose pauses are the event
        # loop's lag at 1,000 sessions in flight.
        record.attempts += 1
        try:
            return await self._complete_once(ep, kwargs, min(cfg.timeout_s, cfg.deadline_s))
        except _Retryable as exc:
            first: _Retryable | None = exc
            last = exc  # the latest failure
        except LLMError:
            raise
        except Exception as exc:
            raise _final(ep, kwargs, record, exc) from exc

        backoff = wait_exponential_jitter(multiplier=0.25, max=20.0, jitter=0.5)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            remaining = cfg.deadline_s - (time.monotonic() - start)
            if isinstance(exc, _Retryable) and exc.retry_after is not None:
                delay = exc.retry_after
            else:
                delay = backoff(state)
            return max(0.0, min(delay, remaining))

        def stop(state: RetryCallState) -> bool:
            # this request's attempts (tenacity's count: its attempt 1 is the first one above), not
            # the record's, which also counts a structured call's earlier schema attempts
            return state.attempt_number >= cfg.max_attempts or time.monotonic() - start >= cfg.deadline_s

        retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
                                 reraise=True)
        last_attempt = start
        try:
            async for attempt in retrying:
                with attempt:
                    if first is not None:  # tenacity's attempt 1 is the one made above: its failure again
                        failed, first = first, None
                        raise failed
                    if time.monotonic() - start >= cfg.deadline_s:
                        # the deadline ran out while waiting to retry: no request is sent, and the call
                        # ends on its last failure as when the deadline runs out during a request
                        raise last
                    record.attempts += 1
                    last_attempt = time.monotonic()
                    remaining = cfg.deadline_s - (last_attempt - start)
                    try:
                        return await self._complete_once(ep, kwargs, min(cfg.timeout_s, remaining))
                    except _Retryable as exc:
                        last = exc
                        raise
        except _Retryable as exc:
            cause = exc.cause
            took = time.monotonic() - start
            spent = f"; its deadline of {cfg.deadline_s:g} s was spent" if took >= cfg.deadline_s else ""
            # the server is gone only if nothing came back whole while the last attempt waited:
            # under random faults (a lost request, a 503 among successes) it is this call that failed
            if exc.unavailable and ep.last_ok < last_attempt:
                what = {"connection": "the connection was refused or dropped",
                        "timeout": f"no reply within {cfg.timeout_s:g} s"}.get(exc.kind, f"HTTP {exc.status}")
                raise BackendUnavailable(
                    ep.name, ep.urls, f"{what}, {record.attempts} attempts in {took:.1f} s{spent} "
                    f"({type(cause).__name__}: {_short(cause, 160)})") from cause
            raise LLMError(
                f"{ep.name}/{kwargs['model']}: gave up after {record.attempts} attempts "
                f"({took:.1f} s{spent}): {type(cause).__name__}: {_short(cause)}",
                attempts=record.attempts,
                status=exc.status,
            ) from cause
        except LLMError:
            raise
        except Exception as exc:
            raise _final(ep, kwargs, record, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _kwargs(self, spec: ModelSpec, messages: list[dict[str, Any]], seed: int | None) -> dict[str, Any]:
        s: SamplingConfig = spec.sampling
        kwargs: dict[str, Any] = {
            "model": spec.model,  # the server's name for it (for kind = "litellm": litellm's model id)
            "messages": messages,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        chosen_seed = s.seed if s.seed is not None else seed
        if chosen_seed is not None:
            kwargs["seed"] = sampling_seed(int(chosen_seed))
        if s.stop:
            kwargs["stop"] = list(s.stop)
        return kwargs

    async def chat(
        self,
        spec: ModelSpec,
        messages: list[dict[str, Any]],
        *,
        prompt_name: str | None = None,
        prompt_hash: str | None = None,
        seed: int | None = None,
        tag: dict[str, Any] | None = None,
    ) -> ChatResult:
        """One chat completion; raises ``LLMError`` after retries/deadline."""
        ep = self._endpoint(spec.endpoint)
        record = CallRecord(ep.name, spec.model, prompt_name, prompt_hash, tag=dict(tag or {}))
        with self._accounting(record):
            reply = await self._complete(ep, self._kwargs(spec, messages, seed), record)
            _add_usage(record, reply)
        return ChatResult(text=reply.text, call=record)

    async def complete_embeds(
        self,
        spec: ModelSpec,
        prompt_embeds: str,
        *,
        prompt_name: str | None = None,
        prompt_hash: str | None = None,
        seed: int | None = None,
        tag: dict[str, Any] | None = None,
    ) -> ChatResult:
        """One completion of a prompt given as embeddings (vLLM's ``prompt_embeds``: base64 of a
        ``torch.save``d [tokens × hidden] tensor; the server needs ``--enable-prompt-embeds``).
        The chat template is already applied inside the embeddings; retries and accounting as ``chat``."""
        ep = self._endpoint(spec.endpoint)
        if ep.cfg.kind == "litellm":
            raise LLMError(f"{ep.name}: prompt embeddings go to a vLLM server, not through litellm")
        record = CallRecord(ep.name, spec.model, prompt_name, prompt_hash, tag=dict(tag or {}))
        with self._accounting(record):
            kwargs = self._kwargs(spec, [], seed)
            del kwargs["messages"]
            kwargs["prompt_embeds"] = prompt_embeds
            reply = await self._complete(ep, kwargs, record)
            _add_usage(record, reply)
        return ChatResult(text=reply.text, call=record)

    async def structured(
        self,
        spec: ModelSpec,
        messages: list[dict[str, Any]],
        schema: type[T],
        *,
        prompt_name: str | None = None,
        prompt_hash: str | None = None,
        seed: int | None = None,
        tag: dict[str, Any] | None = None,
        max_tokens: int | None = None,
    ) -> StructuredResult[T]:
        """A reply validated against ``schema``; schema failures are retried, then raised
        as ``StructuredOutputError`` with the last raw text and the reason.

        ``max_tokens`` overrides the spec's bound (a JSON object cut short is worthless)."""
        ep = self._endpoint(spec.endpoint)
        record = CallRecord(ep.name, spec.model, prompt_name, prompt_hash, tag=dict(tag or {}))
        fmt = response_format(schema, ep.cfg.dialect)
        raw, reason = "", ""
        with self._accounting(record):
            for attempt in range(ep.cfg.schema_attempts):
                kwargs = self._kwargs(spec, messages, None if seed is None else seed + attempt)
                kwargs["response_format"] = fmt
                if max_tokens is not None:
                    kwargs["max_tokens"] = max_tokens
                reply = await self._complete(ep, kwargs, record)
                _add_usage(record, reply)
                raw = reply.text
                try:
                    value = parse_structured(raw, schema)
                except ValidationError as exc:
                    reason = _validation_reason(exc)
                    if reply.finish_reason == "length":
                        reason = f"reply cut off at max_tokens={kwargs['max_tokens']} ({reason})"
                    record.schema_failures.append(f"{reason} in {raw[:200]!r}")
                    continue
                return StructuredResult(value=value, raw_text=raw, call=record)
            err = StructuredOutputError(
                f"{ep.name}/{spec.model}: reply broke the {schema.__name__} schema "
                f"{ep.cfg.schema_attempts} times",
                raw_text=raw,
                reason=reason,
                attempts=record.attempts,
            )
            record.status, record.error = "schema_error", str(err)
            raise err
        raise AssertionError("unreachable")  # pragma: no cover


def _final(ep: _Endpoint, kwargs: dict[str, Any], record: CallRecord, exc: Exception) -> LLMError:
    """A failure that no retry can mend (e.g. HTTP 400), as the ``LLMError`` the caller sees."""
    return LLMError(f"{ep.name}/{kwargs['model']}: {type(exc).__name__}: {_short(exc)}",
                    attempts=record.attempts, status=getattr(exc, "status_code", None))


@dataclass(frozen=True)
class _Reply:
    """What simlab reads from a completion: its first choice's text, why it ended, the model
    that served it and the token counts."""

    text: str
    finish_reason: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int


def _read_reply(data: Any) -> _Reply | str:
    """The reply in a completion's JSON body, or why the body cannot be read as one."""
    if not isinstance(data, dict):
        return f"the reply is not a JSON object: {_short(Exception(data), 200)}"
    if data.get("error") is not None:  # a malfunctioning server: 200 with {"error": …}
        return f"the server answered HTTP 200 with an error object: {_short(Exception(data['error']), 200)}"
    choices = data.get("choices")
    if not choices or not isinstance(choices, list):
        return "the reply has no choices"
    first = choices[0]
    if not isinstance(first, dict):
        return "the reply's first choice is not an object"
    if data.get("object") == "text_completion":  # a completion (prompt embeddings), not a chat
        text = first.get("text")
        if not isinstance(text, str):
            return "the completion's first choice has no text"
    else:
        message = first.get("message")
        if not isinstance(message, dict):
            return "the reply's first choice has no message"
        text = message.get("content")
        if text is None:
            return "the reply's message has no content"
        if not isinstance(text, str):
            return f"the reply's content is a {type(text).__name__}, not text"
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    model = data.get("model")
    return _Reply(text=text, finish_reason=first.get("finish_reason"), model=model if isinstance(model, str) else None,
                  prompt_tokens=_count(usage.get("prompt_tokens")), completion_tokens=_count(usage.get("completion_tokens")))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _add_usage(record: CallRecord, reply: _Reply) -> None:
    record.served_model = reply.model or record.served_model
    record.prompt_tokens += reply.prompt_tokens
    record.completion_tokens += reply.completion_tokens


def _validation_reason(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    if err["type"] == "json_invalid":
        return f"not valid JSON: {err['msg']}"
    return f"{loc}: {err['msg']}"


# Configured API key values (read from the environment): scrubbed from every error text the
# client builds, so a server that echoes a key cannot put it in the store, a log or a report.
_SECRETS: set[str] = set()
REDACTED = "[redacted]"


def scrub(text: str) -> str:
    """``text`` with every configured API key value replaced by ``[redacted]``."""
    for secret in _SECRETS:
        text = text.replace(secret, REDACTED)
    return text


def _short(exc: BaseException, limit: int = 300) -> str:
    text = scrub(str(exc)).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
