"""The servers a run starts, as one fleet: the embedded llama.cpp server (one or more replicas) for
every ``kind = "local"`` endpoint without a base_url, a vLLM server for every ``kind = "vllm"``
endpoint with a ``launch`` table; and the base URLs the client then uses. It stands on the two
servers (``server``, ``launch``), which stand on ``process``; nothing below imports it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simlab.llm.config import LocalEndpoint, VllmEndpoint, api_key
from simlab.local.launch import VllmServer
from simlab.local.server import DEFAULT_ALIAS, REBUILD_HINT, LocalServer, Mode

__all__ = ["EmbeddedBackends", "default_replicas", "local_aliases", "serving"]

_log = logging.getLogger("simlab.local")

# The fleet reads a run's config (a simlab.config.Config: its endpoints and the roles' models), typed
# Any here because the config layer sits above this one.


def local_aliases(config: Any) -> dict[str, str]:
    """Endpoint name → the one model alias its embedded server must serve."""
    from simlab.errors import ConfigError

    specs = [(f"arms[{i}]", a) for i, a in enumerate(config.arms)]
    specs += [*config.simulator_specs(), ("judge", config.judge), ("summary", config.summary)]
    out: dict[str, str] = {}
    for name, ep in config.endpoints.items():
        if not isinstance(ep, LocalEndpoint) or not ep.embedded:
            continue
        models = {(where, s.model) for where, s in specs if s.endpoint == name}
        names = {m for _, m in models}
        if len(names) > 1:
            listing = ", ".join(f"{w}={m}" for w, m in sorted(models))
            raise ConfigError(
                f"the embedded server serves one model alias, but these differ: {listing}",
                field=f"endpoints.{name}",
            )
        out[name] = names.pop() if names else DEFAULT_ALIAS
    return out


def default_replicas() -> int:
    """One single-thread server per core (at most 4): a busy core slows one replica, not all."""
    return max(1, min(os.cpu_count() or 1, 4))


class EmbeddedBackends:
    """The run's backends: an embedded server (one or more replicas) for every ``kind = "local"``
    endpoint without a base_url, a vLLM server for every ``kind = "vllm"`` endpoint with a ``launch``
    table, and the given ``base_urls`` for the rest.

    ``base_urls`` maps endpoint names to their URL(s) (for ``LLMClient``); ``info()`` says what
    was started (mode, fallback, replicas) for the run's metadata; ``explain(endpoint)`` says
    what became of an endpoint's servers when it stopped answering.
    """

    def __init__(self, config: Any, *, log_dir: str | Path | None = None,
                 base_urls: dict[str, str | list[str]] | None = None, only: set[str] | None = None) -> None:
        self.config = config
        self.only = only
        """The endpoints this command calls (e.g. the judge's alone); None: every endpoint a role uses."""
        self.log_dir = Path(log_dir) if log_dir else None
        self.servers: dict[str, list[LocalServer]] = {}
        self.launched: dict[str, VllmServer] = {}
        """Endpoint name → the vLLM server started from its ``launch`` table."""
        self.base_urls: dict[str, str | list[str]] = dict(base_urls or {})

    def start(self) -> EmbeddedBackends:
        try:
            for name, alias in local_aliases(self.config).items():
                if name in self.base_urls or (self.only is not None and name not in self.only):
                    continue
                ep = self.config.endpoints[name]
                assert isinstance(ep, LocalEndpoint)  # local_aliases gives the embedded endpoints only
                n = ep.replicas or default_replicas()
                servers = self.servers[name] = []
                mode: Mode = "auto"
                for i in range(n):
                    log = self.log_dir / f"llama-{name}-{i}.log" if self.log_dir else None
                    server = LocalServer(alias=alias, n_ctx=ep.n_ctx, n_threads=ep.n_threads, log_path=log,
                                         mode=mode, requantize=None if ep.requantize == "none" else ep.requantize)
                    servers.append(server)
                    server.start()
                    mode = server.mode or mode  # the first replica found the mode; the rest need no retry
                self.base_urls[name] = [s.base_url for s in servers]
            used = self.only if self.only is not None else {
                spec.endpoint for spec in (*self.config.arms, *(s for _, s in self.config.simulator_specs()),
                                           self.config.judge, self.config.summary)}
            for name, ep in self.config.endpoints.items():
                if not isinstance(ep, VllmEndpoint) or ep.launch is None or name in self.base_urls or name not in used:
                    continue
                log = self.log_dir / f"vllm-{name}.log" if self.log_dir else None
                embeds = any(a.soft_tokens is not None and a.endpoint == name for a in self.config.arms)
                vllm = self.launched[name] = VllmServer(name, ep.launch, api_key=api_key(ep), log_path=log,
                                                        prompt_embeds=embeds)
                _log.info("starting the vLLM server of endpoint '%s' (log: %s)", name, log or "a temp folder")
                # one after the other: on 2 cores two CPU servers loading side by side took 104 s, one
                # after the other 2 × 37 s
                vllm.start()
                self.base_urls[name] = vllm.base_url
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        started: list[LocalServer | VllmServer] = [s for servers in self.servers.values() for s in servers]
        started += self.launched.values()
        for server in started:  # every server gets SIGTERM first, so their shutdowns overlap
            server.terminate()
        for server in started:
            server.stop()

    def __enter__(self) -> EmbeddedBackends:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def info(self) -> dict[str, dict[str, Any]]:
        """Per started endpoint: what runs it (mode, fallback reason, replicas; vLLM's version and names)."""
        out: dict[str, dict[str, Any]] = {}
        for name, servers in self.servers.items():
            if not servers:
                continue
            first = servers[0]
            out[name] = {"backend": "embedded llama.cpp", "mode": first.mode, "fallback": first.fallback,
                         "replicas": len(servers), "n_threads": first.n_threads, "n_ctx": first.n_ctx,
                         "model_file": first.model_path.name if first.model_path else None,
                         "model_note": first.model_note}
        for name, vllm in self.launched.items():
            out[name] = {"backend": "vllm (launched)", "version": vllm.version, "model": vllm.launch.model,
                         "served": vllm.launch.names, "startup_s": round(vllm.startup_s or 0.0, 1),
                         "log": vllm.log.name if vllm.log else None}
        return out

    def explain(self, endpoint: str) -> str:
        """What happened to ``endpoint``'s servers, for a run that stopped because it stopped answering."""
        vllm = self.launched.get(endpoint)
        if vllm is not None:
            return (f"endpoint '{endpoint}' is the vLLM server simlab launched at {vllm.base_url}: {vllm.status()}\n"
                    f"hint: {vllm.hint()}; then run the same command again: the sessions that were not finished "
                    "were not recorded and will be done then.")
        servers = self.servers.get(endpoint)
        if not servers:
            return ("hint: check that the server is running and reachable at that address, then run the same "
                    "command again: the sessions that were not finished were not recorded and will be done then.")
        lines = [f"endpoint '{endpoint}' is the embedded llama.cpp server ({len(servers)} replica(s)):"]
        lines += [f"  replica {i} at {s.base_url}: {s.status()}" for i, s in enumerate(servers)]
        crashed = [s for s in servers if (s.exit_code() or 0) < 0]
        hint = ("the server was killed by a signal: if it is SIGKILL, the machine may have run out of memory; "
                "otherwise " + REBUILD_HINT) if crashed else "check the log above"
        lines.append(f"hint: {hint}. Then run the same command again: the sessions that were not finished "
                     "were not recorded and will be done then.")
        return "\n".join(lines)


@contextmanager
def serving(config: Any, *, base_urls: dict[str, str | list[str]] | None = None, log_dir: str | Path | None = None,
            start: bool = True, only: set[str] | None = None) -> Iterator[EmbeddedBackends]:
    """The run's backends: embedded servers started for every local endpoint, and vLLM servers for
    every endpoint with a launch table, that ``base_urls`` does not cover (stopped on exit); ``only``:
    just these endpoints. ``start=False`` (nothing to do) starts nothing. A ``BackendUnavailable``
    raised inside gets its ``diagnosis`` (exit signal, log, hint)."""
    from simlab.errors import BackendUnavailable

    backends = EmbeddedBackends(config, log_dir=log_dir, base_urls=base_urls, only=only)
    if start:
        backends.start()
    try:
        yield backends
    except BackendUnavailable as exc:
        if exc.diagnosis is None:  # say what became of the server while it can still be seen
            exc.diagnosis = backends.explain(exc.endpoint)
        raise
    finally:
        backends.stop()
