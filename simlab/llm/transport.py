"""The built-in transports of one completion request (``simlab.llm.backends`` gives each endpoint
kind one): a JSON POST on aiohttp to an OpenAI-compatible server, or ``litellm`` for hosted
providers; and the reply's body read as a ``Reply``. The direct POST costs the least CPU per call of
the routes measured (docs/benchmarks.md), and at many sessions in flight the client's CPU is what
limits a run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from simlab.llm.errors import HTTPStatusError
from simlab.redaction import Redactor

__all__ = ["HTTP", "LitellmTransport", "Reply", "Sessions", "litellm_completion", "read_reply"]

C = TypeVar("C", bound="_Closable")

_litellm: Any = None  # the litellm module once imported (a handle on the library, not client state)


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


async def litellm_completion(url: str, key: str, kwargs: dict[str, Any], timeout: float) -> Any:
    """One completion through litellm (no retries of its own); the reply as a JSON-like dict."""
    resp = await _lib().acompletion(
        api_base=url or None, api_key=key, timeout=timeout, max_retries=0, num_retries=0,
        # self-served models are not in litellm's price list; a zero custom price skips
        # its failing lookup, litellm's largest CPU cost per call in a profile
        input_cost_per_token=0.0, output_cost_per_token=0.0, **kwargs)
    return resp.model_dump()


class LitellmTransport:
    """The transport of a ``litellm`` endpoint: each request through ``litellm_completion``."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key

    async def complete(self, kwargs: dict[str, Any], timeout: float) -> Any:
        if "prompt_embeds" in kwargs:
            raise ValueError("prompt embeddings go to a vLLM server, not through litellm")
        return await litellm_completion(self.url, self.key, kwargs, timeout)

    async def close(self) -> None:
        """Nothing to close: litellm keeps its own connections."""


class HTTP:
    """One replica's HTTP session on one event loop: an OpenAI-compatible POST with a JSON body.

    aiohttp directly, not the openai SDK: the SDK's ``post()`` builds an httpx request, cookie
    jar, URL and headers object and a pydantic options model around every call, several times the
    CPU of the POST itself; at 1,000 sessions in flight that difference set the event loop's lag
    and the run's rate (docs/benchmarks.md). The errors are the SDK's cases: ``HTTPStatusError``
    for a status >= 400, ``TimeoutError``, and aiohttp's connection errors (``ConnectionError``
    for a reply cut off).
    """

    def __init__(self, url: str, key: str, connections: int, *, headers: Mapping[str, str] | None = None) -> None:
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
            "Accept": "application/json", "User-Agent": "simlab", **(headers or {})})

    async def complete(self, kwargs: dict[str, Any], timeout: float) -> Any:
        """One completion: a chat, or a completion of a prompt given as embeddings (``prompt_embeds``)."""
        if "prompt_embeds" in kwargs:  # the completions endpoint: the prompt is embeddings
            return await self.post("/completions", {"prompt": None, **kwargs}, timeout)
        return await self.post("/chat/completions", kwargs, timeout)

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


class _Closable(Protocol):
    async def close(self) -> None: ...


async def _close_at_loop_end(sessions: list[_Closable]) -> AsyncIterator[None]:
    """Closes ``sessions`` when the event loop shuts down its async generators (``asyncio.run``
    does, before closing the loop), so a client nobody closed leaves no open connection behind."""
    try:
        yield
    finally:
        for http in sessions:
            with contextlib.suppress(Exception):
                await http.close()


class Sessions:
    """The transports (HTTP sessions) one client opened, by event loop (a session belongs to one loop)."""

    def __init__(self) -> None:
        self._open: dict[asyncio.AbstractEventLoop, list[_Closable]] = {}
        self._closers: list[AsyncIterator[None]] = []

    async def open(self, make: Callable[[], C]) -> C:
        """A new transport made on the running loop, closed by ``aclose`` or else when the loop ends."""
        loop = asyncio.get_running_loop()
        http = make()
        opened = self._open.get(loop)
        if opened is None:
            opened = self._open[loop] = []
            closer = _close_at_loop_end(opened)
            await closer.__anext__()
            self._closers.append(closer)
        opened.append(http)
        return http

    async def aclose(self) -> None:
        """Close the sessions opened on the running loop."""
        for http in self._open.pop(asyncio.get_running_loop(), []):
            await http.close()


@dataclass(frozen=True)
class Reply:
    """What simlab reads from a completion: its first choice's text, why it ended, the model
    that served it and the token counts."""

    text: str
    finish_reason: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Of ``prompt_tokens``, those read from the server's prompt cache (``usage.prompt_tokens_details``)."""


def read_reply(data: Any, redact: Redactor) -> Reply | str:
    """The reply in a completion's JSON body, or why the body cannot be read as one (quoting the
    body through ``redact``). The reply's text goes through ``redact`` too: a server that echoes
    the API key in its answer gets it into no transcript, cache or summary."""
    if not isinstance(data, dict):
        return f"the reply is not a JSON object: {redact.brief(data, 200)}"
    if data.get("error") is not None:  # a malfunctioning server: 200 with {"error": …}
        return f"the server answered HTTP 200 with an error object: {redact.brief(data['error'], 200)}"
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
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Reply(text=redact(text), finish_reason=first.get("finish_reason"), model=model if isinstance(model, str) else None,
                 prompt_tokens=_count(usage.get("prompt_tokens")), completion_tokens=_count(usage.get("completion_tokens")),
                 cached_tokens=cached)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
