"""The servers a run starts, as one fleet: the embedded llama.cpp server (one or more replicas) for
every ``kind = "local"`` endpoint without a base_url, a vLLM server for every ``kind = "vllm"``
endpoint with a ``launch`` table; and the base URLs the client then uses. It stands on the two
servers (``server``, ``launch``), which stand on ``process``; nothing below imports it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from simlab.llm.config import LocalEndpoint, VllmEndpoint, api_key
from simlab.local.launch import VllmServer
from simlab.local.process import describe_exit
from simlab.local.server import DEFAULT_ALIAS, REBUILD_HINT, LocalServer, Mode

__all__ = ["RESTART_BACKOFF_S", "EmbeddedBackends", "Restartable", "Watchdog", "default_replicas", "local_aliases",
           "serving"]

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


RESTART_BACKOFF_S = 1.0
"""The wait before a dead server's first restart; each further restart of it waits twice as long (at most 30 s)."""
_RESTARTED_GRACE_S = 10.0  # calls wait this long past a restart for its first reply before the window applies again


class Restartable(Protocol):
    """A server simlab started and can start again on the same port (``LocalServer``, ``VllmServer``)."""

    def exit_code(self) -> int | None: ...

    def start(self) -> Any: ...

    def stop(self) -> None: ...


class Watchdog:
    """Restarts the servers a run launched when they die, each up to its endpoint's ``restarts`` times
    with backoff, on the same port, so the run's calls (which wait for an endpoint being restarted,
    see ``LLMClient``'s ``recovering``) go on. Every restart is kept (``restarts``) for the run's
    metadata and report; beyond the limit a server stays dead and the run stops as for any dead
    backend. Servers at a base_url are not simlab's: nothing watches them.

    ``servers`` is a list of (endpoint, which server in words, the server, its restart limit).
    """

    def __init__(self, servers: list[tuple[str, str, Restartable, int]], *, poll_s: float = 0.2) -> None:
        self.servers = servers
        self.poll_s = poll_s
        self.restarts: list[dict[str, Any]] = []
        """One entry per restart: ``at`` (UTC), ``endpoint``, ``server``, ``exit`` (how it had ended),
        ``attempt`` (its how-manieth restart), ``ok`` and ``took_s`` (or ``error``)."""
        self._used: dict[int, int] = {}
        self._recovering: dict[str, float] = {}  # endpoint → until when (monotonic) its calls wait
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        if self.servers and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="simlab-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Watch no more (before the servers are stopped at the run's end: that is no death)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None

    def recovering(self, endpoint: str) -> bool:
        """Whether one of ``endpoint``'s servers is dead and being restarted (its calls should wait)."""
        with self._lock:
            return self._recovering.get(endpoint, 0.0) > time.monotonic()

    def used(self, server: Restartable) -> int:
        """How many times ``server`` was restarted."""
        return self._used.get(id(server), 0)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            for endpoint, which, server, limit in self.servers:
                code = server.exit_code()
                if code is None or self._stop.is_set() or self.used(server) >= limit:
                    continue
                self._restart(endpoint, which, server, code)

    def _restart(self, endpoint: str, which: str, server: Restartable, code: int) -> None:
        attempt = self.used(server) + 1
        self._used[id(server)] = attempt
        entry: dict[str, Any] = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                 "endpoint": endpoint, "server": which, "exit": describe_exit(code),
                                 "attempt": attempt}
        _log.warning("endpoint '%s': %s %s; restarting it (%d of its restarts)", endpoint, which, entry["exit"], attempt)
        with self._lock:
            self._recovering[endpoint] = float("inf")
        grace = 0.0
        try:
            if self._stop.wait(min(30.0, RESTART_BACKOFF_S * 2 ** (attempt - 1))):
                return
            t0 = time.monotonic()
            server.stop()
            try:
                server.start()
            except Exception as exc:  # noqa: BLE001 - a restart that fails is recorded; the server stays dead
                entry.update(ok=False, error=str(exc).splitlines()[0][:300])
                _log.warning("endpoint '%s': the restart of %s failed: %s", endpoint, which, entry["error"])
            else:
                entry.update(ok=True, took_s=round(time.monotonic() - t0, 1))
                grace = _RESTARTED_GRACE_S  # up again: its calls' next probes get their replies
            with self._lock:
                self.restarts.append(entry)
        finally:
            with self._lock:
                self._recovering[endpoint] = time.monotonic() + grace


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
        self.watchdog = Watchdog([])
        """Restarts the started servers that die (``restarts`` of each endpoint); see ``Watchdog``."""

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
        watched: list[tuple[str, str, Restartable, int]] = []
        for name, servers in self.servers.items():
            limit = self.config.endpoints[name].restarts
            watched += [(name, f"embedded llama.cpp replica {i}", s, limit) for i, s in enumerate(servers)]
        watched += [(name, "the launched vLLM server", v, v.launch.restarts) for name, v in self.launched.items()]
        self.watchdog = Watchdog(watched).start()
        return self

    def recovering(self, endpoint: str) -> bool:
        """Whether a server of ``endpoint`` that died is being restarted (``LLMClient``'s ``recovering``)."""
        return self.watchdog.recovering(endpoint)

    @property
    def restarts(self) -> list[dict[str, Any]]:
        """The restarts of servers that died during the run, as the run's metadata keeps them."""
        return list(self.watchdog.restarts)

    def stop(self) -> None:
        self.watchdog.stop()
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
            restarted = (f" (restarted {self.watchdog.used(vllm)} time(s), its limit: launch.restarts = "
                         f"{vllm.launch.restarts})" if self.watchdog.used(vllm) else "")
            return (f"endpoint '{endpoint}' is the vLLM server simlab launched at {vllm.base_url}{restarted}: "
                    f"{vllm.status()}\n"
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
