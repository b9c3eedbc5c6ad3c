"""Failure classification: which errors of a model call are transient (429, 5xx, timeouts, lost
connections, a 200 that is not a completion) and worth a retry, and which are final. The errors a
caller sees (``LLMError``, ``StructuredOutputError``, ``BackendUnavailable``) live in ``simlab.errors``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Literal

__all__ = ["HTTPStatusError", "Retryable", "classify"]


class HTTPStatusError(Exception):
    """An HTTP error status from an OpenAI-compatible server, with the start of its body."""

    def __init__(self, status_code: int, reason: str, body: str, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers  # e.g. Retry-After of a 429 (case-insensitive)
        super().__init__(f"HTTP {status_code} {reason}: {body[:500]}".rstrip(": "))


class Retryable(Exception):
    """A transient failure of one request, wrapping its ``cause``; how the server failed (``kind``)
    decides whether the endpoint is unavailable once the retries run out."""

    def __init__(self, cause: BaseException, retry_after: float | None, status: int | None,
                 kind: Literal["connection", "timeout", "status", "shape"]) -> None:
        self.cause = cause
        self.retry_after = retry_after
        self.status = status
        self.kind = kind
        super().__init__(str(cause))

    @property
    def unavailable(self) -> bool:
        """The server is not answering at all (as opposed to failing this one request)."""
        return self.kind in ("connection", "timeout") or self.status in (502, 503, 504)

    @property
    def wrong_shape(self) -> bool:
        """The server answered, but with something that is not a completion (a 200 whose body is not
        JSON, holds an error object or no choices)."""
        return self.kind == "shape"


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


def classify(exc: BaseException) -> Retryable | None:
    """Transient failures become ``Retryable``; anything else is final. The direct route raises
    ``HTTPStatusError``, ``TimeoutError`` and aiohttp's connection errors; litellm's errors
    subclass the openai SDK's."""
    import openai

    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    if _never_connected(exc):
        # litellm reports a refused or reset connection as a 500 InternalServerError, and the
        # aiohttp transport as a connect timeout: the cause in the chain says what happened
        return Retryable(exc, None, None, "connection")
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return Retryable(exc, None, None, "timeout")
    if isinstance(exc, (openai.RateLimitError, openai.InternalServerError)) or (
            status is not None and (status == 429 or status >= 500)):
        return Retryable(exc, _retry_after(exc), status, "status")
    if isinstance(exc, (openai.APIConnectionError, ConnectionError)):
        return Retryable(exc, None, status, "connection")
    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        # an HTTP 200 whose body is not a JSON completion: a malfunctioning server, like a 5xx
        return Retryable(exc, None, status, "shape")
    if _error_object_in_200(exc):
        # a server that answers 200 with {"error": …} is malfunctioning, not refusing the request
        return Retryable(exc, None, status, "shape")
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
