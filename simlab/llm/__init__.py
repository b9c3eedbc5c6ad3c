"""The LLM client layer: async calls that POST JSON over aiohttp to OpenAI-compatible servers
(vLLM, llama.cpp, hosted APIs), or go through litellm for an endpoint of ``kind = "litellm"``."""

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
