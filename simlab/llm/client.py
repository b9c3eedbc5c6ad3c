"""The async client every model call simlab makes goes through: ``LLMClient`` and its retry loop.

Per endpoint, calls are routed to a replica (``routing``), paced and bounded, sent (``transport``),
retried by ``tenacity`` with exponential backoff and jitter inside a total deadline when the failure
is transient (``errors``), checked against a schema when structured (``dialects``), and reported as
a ``CallRecord`` whether they succeed or not (``recording``). The client knows nothing of personas,
protocol or statistics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from simlab.errors import BackendUnavailable, BackendUnusable, LLMError, StructuredOutputError
from simlab.llm.backends import Transport, backend_of
from simlab.llm.cache import ResponseCache
from simlab.llm.config import Dialect, EndpointConfig, ModelSpec, SamplingConfig
from simlab.llm.dialects import parse_structured, response_format, validation_reason
from simlab.llm.errors import Retryable, classify
from simlab.llm.pacing import LoopPacers
from simlab.llm.pricing import BudgetExhausted, Ledger
from simlab.llm.recording import CallRecord, emit
from simlab.llm.routing import Endpoint, Replica
from simlab.llm.transport import Reply, Sessions, read_reply
from simlab.records import LLMCallRecord
from simlab.redaction import Redactor, redact_key_shapes
from simlab.seeds import sampling_seed

__all__ = ["ChatResult", "LLMClient", "StructuredResult"]

T = TypeVar("T", bound=BaseModel)

_logger = logging.getLogger("simlab.llm")

_FORMATS_KEPT = 1024  # response formats a client keeps (schemas are built once per shape upstream)
MIN_ATTEMPT_S = 0.05
"""A retry is not sent with less of the call's deadline left than this: it could only time out."""


@dataclass
class ChatResult:
    """A chat reply's text and the record of its call."""

    text: str
    call: CallRecord


@dataclass
class StructuredResult(Generic[T]):
    """A structured reply: the validated value, the raw text and the record of its call."""

    value: T
    raw_text: str
    call: CallRecord


class LLMClient:
    """Async client for every model role (arms, simulator, judge, summary).

    Args:
        endpoints: endpoint configs by name.
        base_urls: base URL overrides by endpoint name (e.g. the embedded servers' URLs); a list
            names replicas of one server, among which calls are spread (see ``affinity``).
        on_call: called with the ``LLMCallRecord`` of every call (``recording`` collects them per block).
        ledger: prices every reply and holds the calls to a budget (``simlab.llm.pricing``; default:
            litellm's offline cost map, no budget).
        cache: serve replies from (and store them in) this response cache (``simlab.llm.cache``).
        recovering: says whether an endpoint's server is being restarted by whoever launched it (the
            fleet of a run); meanwhile its calls wait for it past their ``dead_after_s`` window.

    Example:
        >>> client = LLMClient({"stub": OpenAIEndpoint(base_url=url)})   # doctest: +SKIP
        >>> (await client.chat(ModelSpec(endpoint="stub", model="m"), msgs)).text  # doctest: +SKIP
    """

    def __init__(
        self,
        endpoints: Mapping[str, EndpointConfig],
        *,
        base_urls: Mapping[str, str | Sequence[str]] | None = None,
        on_call: Callable[[LLMCallRecord], None] | None = None,
        ledger: Ledger | None = None,
        cache: ResponseCache | None = None,
        recovering: Callable[[str], bool] | None = None,
    ) -> None:
        self.ledger = ledger or Ledger()
        self.recovering = recovering
        self.cache = cache
        self._identities: dict[str, dict[str, Any]] = {}
        self._configs = dict(endpoints)
        self._base_urls = dict(base_urls or {})
        self._endpoints: dict[str, Endpoint] = {}
        self.on_call = on_call
        self._sessions = Sessions()
        self._pacers = LoopPacers()
        self._redact = Redactor()  # the API keys of this client's endpoints, as they are resolved
        self._formats: dict[tuple[type[BaseModel], Dialect], dict[str, Any]] = {}

    async def _transport(self, ep: Endpoint, replica: Replica) -> Transport:
        """The replica's transport for the running event loop (an HTTP session belongs to one loop),
        made by the endpoint's backend."""
        loop = asyncio.get_running_loop()
        if replica.http is not None and replica.http[0] is loop:
            return replica.http[1]
        make = ep.backend.transport
        transport = await self._sessions.open(
            lambda: make(ep.cfg, url=replica.url, key=ep.key, connections=replica.bound))
        replica.http = (loop, transport)
        return transport

    def _response_format(self, schema: type[BaseModel], dialect: Dialect) -> dict[str, Any]:
        """``response_format`` built once per schema and dialect (callers must not change the dict)."""
        fmt = self._formats.get((schema, dialect))
        if fmt is None:
            if len(self._formats) >= _FORMATS_KEPT:
                self._formats.clear()
            fmt = self._formats[(schema, dialect)] = response_format(schema, dialect)
        return fmt

    async def aclose(self) -> None:
        """Close the HTTP connections this client opened in the running event loop."""
        await self._sessions.aclose()
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

    def _endpoint(self, name: str) -> Endpoint:
        ep = self._endpoints.get(name)
        if ep is None:
            cfg = self._configs[name]
            backend = backend_of(cfg)
            given = self._base_urls.get(name) or cfg.urls
            urls = [given] if isinstance(given, str) else list(given or [])
            if not urls and backend.url_optional:
                urls = [""]  # e.g. a hosted provider: the transport knows where it is
            if not urls:
                raise LLMError(f"endpoint {name!r} has no base_url (is the embedded server running?)")
            ep = self._endpoints[name] = Endpoint(name, cfg, [u.rstrip("/") for u in urls], backend)
            self._redact = self._redact.adding(ep.secret)
        return ep

    @contextmanager
    def _accounting(self, record: CallRecord) -> Iterator[None]:
        """Latency, status and the ``on_call`` report for one logical call, failed or not;
        a raised ``LLMError`` carries its record as ``.call``."""
        start = time.monotonic()
        unsent = False
        try:
            yield
        except (LLMError, BackendUnavailable) as exc:
            if record.status == "ok":
                record.status, record.error = "error", str(exc)
            exc.call = record
            raise
        except BudgetExhausted as exc:
            # not sent: nothing to record, unless earlier replies of this call (schema retries) were paid for
            unsent = record.attempts == 0
            record.status, record.error = "error", f"stopped: {exc}"
            raise
        finally:
            record.latency_s = time.monotonic() - start
            if not unsent:
                emit(record, self.on_call)

    async def _send(self, ep: Endpoint, replica: Replica, kwargs: dict[str, Any], timeout: float) -> Any:
        """One request by the endpoint's transport; the reply's JSON body (a dict, or the text of a body
        that is not JSON)."""
        transport = await self._transport(ep, replica)
        async with self._pacers.current():
            return await transport.complete(kwargs, timeout)

    async def _complete_once(self, ep: Endpoint, kwargs: dict[str, Any], timeout: float, record: CallRecord) -> Reply:
        """One attempt: held against the budget, sent, and its reply priced into ``record``."""
        rate = self.ledger.pricing.rate(ep.name, ep.cfg.kind, kwargs["model"], ep.cfg.in_flight)
        held = self.ledger.hold(rate, kwargs, timeout)  # BudgetExhausted: not sent, not an attempt
        record.attempts += 1
        replica = ep.pick()
        replica.load += 1
        sent = time.monotonic()
        if ep.first_sent is None:
            ep.first_sent = sent  # the dead window of an endpoint that never answered starts here
        try:
            async with replica.in_flight:
                if ep.throttle is not None:
                    async with ep.throttle:
                        pass  # the throttle spaces request starts; hold it only to take a slot
                try:
                    resp = await self._send(ep, replica, kwargs, timeout)
                except Exception as exc:  # noqa: BLE001 - classified below
                    retryable = classify(exc)
                    if retryable is None:
                        raise
                    if retryable.kind == "connection" and not replica.down:
                        replica.down = True  # the next attempt goes to another replica, if any
                        if len(ep.replicas) > 1:
                            _logger.warning("endpoint %r: replica %s is not answering (%s); using the others",
                                            ep.name, replica.url, self._redact.brief(exc, 120))
                    if retryable.wrong_shape:
                        ep.unusable = self._unusable(exc)
                    ep.failed_in_row += 1
                    raise retryable from exc
                replica.down = False
                reply = read_reply(resp, self._redact)
                if not isinstance(reply, str):  # a reply came back: paid for, whether its text is used or not
                    cost = rate.cost(reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens,
                                     time.monotonic() - sent)
                    record.cost_usd += cost
                    record.price_source = rate.source
                    self.ledger.charge(rate, ep.name, kwargs["model"], cost)
                if isinstance(reply, str):  # e.g. an HTTP 200 whose choices list is empty: retried like a 5xx
                    ep.unusable = redact_key_shapes(reply)
                    ep.failed_in_row += 1
                    raise Retryable(ValueError(reply), None, None, "shape")
                if "response_format" not in kwargs:  # a structured reply is usable once it meets its schema
                    ep.last_ok, ep.failed_in_row = time.monotonic(), 0
                return reply
        finally:
            replica.load -= 1
            self.ledger.release(held)

    def _identity(self, ep: Endpoint) -> dict[str, Any]:
        """What of an endpoint's config decides its replies (a response cache key's part): its kind,
        its configured server and what a launch table or the embedded server loads; not its bounds,
        timeouts or retries, nor a URL given at run time (an embedded server's port)."""
        found = self._identities.get(ep.name)
        if found is None:
            skip = {"replica_urls", "api_key_env", "max_in_flight", "rate_limit", "timeout_s", "max_attempts",
                    "deadline_s", "schema_attempts", "replicas", "n_threads", "structured_output",
                    "dead_after_s", "restarts"}
            found = {k: v for k, v in ep.cfg.model_dump(mode="json").items() if k not in skip}
            if isinstance(found.get("launch"), dict):
                found["launch"] = {k: v for k, v in found["launch"].items() if k not in ("startup_timeout_s", "python", "restarts")}
            self._identities[ep.name] = found
        return found

    async def _complete(self, ep: Endpoint, kwargs: dict[str, Any], record: CallRecord) -> Reply:
        """One request's reply: from the response cache when it holds the request, else sent (and stored)."""
        cache = self.cache
        if cache is None or not cache.cacheable(kwargs):
            return await self._complete_sent(ep, kwargs, record)
        key = cache.key(kwargs, endpoint_identity=self._identity(ep), prompt_hash=record.prompt_hash)
        hit = cache.get(key)
        if hit is not None:
            rate = self.ledger.pricing.rate(ep.name, ep.cfg.kind, kwargs["model"], ep.cfg.in_flight)
            cache.saved_usd += rate.cost(hit.prompt_tokens, hit.completion_tokens, hit.cached_tokens)
            record.price_source = "cache"
            return hit
        reply = await self._complete_sent(ep, kwargs, record)
        cache.put(key, reply)
        return reply

    async def _complete_sent(self, ep: Endpoint, kwargs: dict[str, Any], record: CallRecord) -> Reply:
        cfg = ep.cfg
        start = time.monotonic()
        # The first attempt goes without tenacity: most calls need no retry, and each retry loop
        # left objects in reference cycles for the garbage collector, whose pauses are the event
        # loop's lag at 1,000 sessions in flight.
        try:
            return await self._complete_once(ep, kwargs, min(cfg.timeout_s, cfg.deadline_s), record)
        except Retryable as exc:
            first: Retryable | None = exc
            last = exc  # the latest failure
        except (LLMError, BudgetExhausted):
            raise
        except Exception as exc:
            raise self._final(ep, kwargs, record, exc) from exc

        backoff = wait_exponential_jitter(multiplier=0.25, max=20.0, jitter=0.5)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            remaining = cfg.deadline_s - (time.monotonic() - start)
            if isinstance(exc, Retryable) and exc.retry_after is not None:
                delay = exc.retry_after
            else:
                delay = backoff(state)
            if isinstance(exc, Retryable) and (exc.unavailable or exc.wrong_shape):
                # a server that may be gone is looked at again when its window ends, not after it
                delay = min(delay, max(MIN_ATTEMPT_S, cfg.dead_after_s - ep.silent_for(time.monotonic())))
            return max(0.0, min(delay, remaining))

        def stop(state: RetryCallState) -> bool:
            # this request's attempts (tenacity's count: its attempt 1 is the first one above), not
            # the record's, which also counts a structured call's earlier schema attempts
            if state.attempt_number >= cfg.max_attempts or time.monotonic() - start >= cfg.deadline_s:
                return True
            exc = state.outcome.exception() if state.outcome else None
            # nothing usable from the endpoint for its whole window: no more retries, its verdict is due
            return (isinstance(exc, Retryable) and (exc.unavailable or exc.wrong_shape)
                    and ep.silent_for(time.monotonic()) >= cfg.dead_after_s)

        retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception(lambda e: isinstance(e, Retryable)),
                                 reraise=True)
        last_attempt = start
        try:
            async for attempt in retrying:
                with attempt:
                    if first is not None:  # tenacity's attempt 1 is the one made above: its failure again
                        failed, first = first, None
                        raise failed
                    if cfg.deadline_s - (time.monotonic() - start) < MIN_ATTEMPT_S:
                        # the deadline ran out (or all but a sliver of it) while waiting to retry: no
                        # request is sent, and the call ends on its last failure as when the deadline
                        # runs out during a request
                        raise last
                    last_attempt = time.monotonic()
                    remaining = cfg.deadline_s - (last_attempt - start)
                    try:
                        return await self._complete_once(ep, kwargs, min(cfg.timeout_s, remaining), record)
                    except Retryable as exc:
                        if exc.kind == "timeout" and remaining < cfg.timeout_s:
                            # the deadline, not the server, cut this attempt short (on a busy machine a
                            # retry can start with a millisecond left): the call ends on the failure before
                            raise last from None
                        last = exc
                        raise
        except Retryable as exc:
            failed, sent = exc, last_attempt
        except (LLMError, BudgetExhausted):
            raise
        except Exception as exc:
            raise self._final(ep, kwargs, record, exc) from exc
        return await self._spent(ep, kwargs, record, failed, start, sent)

    async def _spent(self, ep: Endpoint, kwargs: dict[str, Any], record: CallRecord, failed: Retryable,
                     start: float, sent: float) -> Reply:
        """A call whose retries are spent (its last attempt sent at ``sent``): a failed call if the server
        answered others meanwhile; else, if it is not answering, or answers in no usable shape to other
        calls too (more failures in a row than one call makes), probed until a usable reply comes
        (returned) or its endpoint's ``dead_after_s`` window passes with none (``BackendUnavailable``:
        the run stops and the session stays to do)."""
        cfg = ep.cfg
        pause = 0.25
        while failed.unavailable or failed.wrong_shape:
            now = time.monotonic()
            silent = ep.silent_for(now)
            if silent >= cfg.dead_after_s and not self._recovering(ep.name):
                raise self._dead(ep, record, failed, now - start, silent)
            if ep.last_ok >= sent:
                break  # a usable reply came back while this call's last attempt was out: the server works
            if failed.wrong_shape and ep.failed_in_row <= cfg.max_attempts:
                break  # no more failures in a row than this call's own: a bad reply to it, not a broken server
            left = cfg.dead_after_s - silent
            await asyncio.sleep(max(MIN_ATTEMPT_S, min(pause, left) if left > 0 else pause))
            pause = min(pause * 2, 5.0)
            sent = time.monotonic()
            try:
                return await self._complete_once(ep, kwargs, cfg.timeout_s, record)
            except Retryable as exc:
                failed = exc
        cause = failed.cause
        took = time.monotonic() - start
        spent = f"; its deadline of {cfg.deadline_s:g} s was spent" if took >= cfg.deadline_s else ""
        raise LLMError(
            f"{ep.name}/{kwargs['model']}: gave up after {record.attempts} attempts "
            f"({took:.1f} s{spent}): {type(cause).__name__}: {self._redact.brief(cause)}",
            attempts=record.attempts,
            status=failed.status,
        ) from cause

    def _dead(self, ep: Endpoint, record: CallRecord, failed: Retryable, took: float,
              silent: float) -> BackendUnavailable:
        """The error that stops the run: ``ep`` gave nothing usable for its whole window."""
        cfg = ep.cfg
        window = f"nothing usable came back from it for {silent:.1f} s (dead_after_s = {cfg.dead_after_s:g})"
        cause = failed.cause
        if failed.wrong_shape:
            example = ep.unusable or self._redact.brief(cause, 160)
            err: BackendUnavailable = BackendUnusable(
                ep.name, ep.urls, f"{window}, {record.attempts} attempts of this call in {took:.1f} s; "
                f"the last reply: {example}")
        else:
            what = {"connection": "the connection was refused or dropped",
                    "timeout": f"no reply within {cfg.timeout_s:g} s"}.get(failed.kind, f"HTTP {failed.status}")
            err = BackendUnavailable(
                ep.name, ep.urls, f"{what}, {record.attempts} attempts in {took:.1f} s; {window} "
                f"({type(cause).__name__}: {self._redact.brief(cause, 160)})")
        err.__cause__ = cause
        return err

    def _unusable(self, exc: BaseException) -> str:
        """A reply in no usable shape, in brief for a message: the start of a body that is not JSON
        as it came, else the error; the client's keys and anything shaped like a key redacted."""
        node: BaseException | None = exc
        seen: set[int] = set()
        while node is not None and id(node) not in seen:
            seen.add(id(node))
            if isinstance(node, json.JSONDecodeError):
                return redact_key_shapes(f"a body that is not JSON ({node.msg} at character {node.pos}): "
                                         f"{self._redact.brief(node.doc, 160)}")
            node = node.__cause__ or node.__context__
        return redact_key_shapes(self._redact.brief(exc, 160))

    def _recovering(self, endpoint: str) -> bool:
        return self.recovering is not None and self.recovering(endpoint)

    def _final(self, ep: Endpoint, kwargs: dict[str, Any], record: CallRecord, exc: Exception) -> LLMError:
        """A failure that no retry can mend (e.g. HTTP 400), as the ``LLMError`` the caller sees."""
        return LLMError(f"{ep.name}/{kwargs['model']}: {type(exc).__name__}: {self._redact.brief(exc)}",
                        attempts=record.attempts, status=getattr(exc, "status_code", None))

    def _kwargs(self, spec: ModelSpec, messages: list[dict[str, Any]], seed: int | None) -> dict[str, Any]:
        s: SamplingConfig = spec.sampling
        kwargs: dict[str, Any] = {
            "model": spec.model,  # the server's name for it (through litellm: litellm's model id)
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
        if not ep.backend.prompt_embeds:
            raise LLMError(f"{ep.name}: prompt embeddings go to a vLLM server (kind = 'vllm'), not to an endpoint "
                           f"of kind '{ep.cfg.kind}'")
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
        fmt = self._response_format(schema, ep.cfg.dialect)
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
                    if record.price_source != "cache":  # a reply the server sent now: it answers usably
                        ep.last_ok, ep.failed_in_row = time.monotonic(), 0
                except ValidationError as exc:
                    reason = validation_reason(exc)
                    if reply.finish_reason == "length":
                        reason = f"reply cut off at max_tokens={kwargs['max_tokens']} ({reason})"
                    record.schema_failures.append(f"{self._redact(reason)} in {self._redact(raw)[:200]!r}")
                    continue
                return StructuredResult(value=value, raw_text=raw, call=record)
            if ep.silent_for(time.monotonic()) >= ep.cfg.dead_after_s and not self._recovering(ep.name):
                # no reply of this endpoint was usable for its whole window: the server, not this call
                dead = BackendUnusable(ep.name, ep.urls, f"nothing usable came back from it for "
                                       f"{ep.silent_for(time.monotonic()):.1f} s (dead_after_s = "
                                       f"{ep.cfg.dead_after_s:g}); the last reply broke the {schema.__name__} "
                                       f"schema ({self._redact(reason)}): {self._redact.brief(raw, 160)}")
                record.status, record.error = "error", str(dead)
                raise dead
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


def _add_usage(record: CallRecord, reply: Reply) -> None:
    record.served_model = reply.model or record.served_model
    record.prompt_tokens += reply.prompt_tokens
    record.completion_tokens += reply.completion_tokens
    record.cached_tokens += reply.cached_tokens
