"""Call recording: the ``CallRecord`` of one logical call, who made it (``call_context``) and where
its stored form goes (``recording``). Context variables, so tasks started inside a block report
to that block: the four arms' replies of a turn, made concurrently, land in their session's list."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from simlab.records import LLMCallRecord, PriceSource

__all__ = ["CallRecord", "Status", "call_context", "emit", "recording"]

Status = Literal["ok", "error", "schema_error"]


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
    cached_tokens: int = 0
    """Of the prompt tokens, those the server read from its prompt cache."""
    cost_usd: float = 0.0
    """USD of every reply of this call (``simlab.llm.pricing``)."""
    price_source: PriceSource | None = None
    """How the replies were priced; None when no reply came."""

    def to_record(self, fields: Mapping[str, Any]) -> LLMCallRecord:
        """The call as the run store keeps it: this accounting plus who made it (``call_context``)."""
        return LLMCallRecord(
            conversation_id=fields.get("conversation_id"), role=fields.get("role", "simulator"),
            arm=fields.get("arm"), instrument=fields.get("instrument"), model=self.model,
            served_model=self.served_model, endpoint=self.endpoint,
            prompt_name=self.prompt_name, prompt_hash=self.prompt_hash, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens, latency_s=round(self.latency_s, 4),
            attempts=max(1, self.attempts), status=self.status, error=self.error,
            cached_tokens=self.cached_tokens, cost_usd=round(self.cost_usd, 10), price_source=self.price_source,
        )


# Who is calling (role, arm, instrument, conversation_id) and the lists collecting the records.
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


def emit(record: CallRecord, on_call: Callable[[LLMCallRecord], None] | None) -> None:
    """Report a finished call to every enclosing ``recording`` block and to ``on_call``."""
    sinks = _sinks.get()
    if not sinks and on_call is None:
        return
    stored = record.to_record(_call_fields.get() or {})
    for sink in sinks:
        sink.append(stored)
    if on_call is not None:
        on_call(stored)
