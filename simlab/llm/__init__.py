"""The LLM client layer (async, litellm over the OpenAI-compatible HTTP API)."""

from simlab.llm.client import (
    CallRecord,
    ChatResult,
    LLMClient,
    StructuredResult,
    affinity,
    call_context,
    parse_structured,
    recording,
    response_format,
)

__all__ = ["CallRecord", "ChatResult", "LLMClient", "StructuredResult", "affinity", "call_context", "parse_structured",
           "recording", "response_format"]
