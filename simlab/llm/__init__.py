"""The LLM client layer: async calls that POST JSON over aiohttp to OpenAI-compatible servers
(vLLM, llama.cpp, hosted APIs), or go through litellm for an endpoint of ``kind = "litellm"``."""

from simlab.llm.client import ChatResult, LLMClient, StructuredResult
from simlab.llm.dialects import parse_structured, response_format
from simlab.llm.recording import CallRecord, call_context, recording
from simlab.llm.routing import affinity

__all__ = ["CallRecord", "ChatResult", "LLMClient", "StructuredResult", "affinity", "call_context", "parse_structured",
           "recording", "response_format"]
