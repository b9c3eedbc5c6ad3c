"""What every server simlab starts stands on: a free loopback port, a process that dies with its
parent, how a process ended in words, a probe request's outcome, and the error a backend that cannot
start raises. The llama.cpp server (``server``) and the vLLM server (``launch``) import this module;
the fleet that starts a run's servers (``fleet``) imports them. Nothing here imports them back."""

from __future__ import annotations

import ctypes
import signal
import socket
from dataclasses import dataclass

from simlab.errors import SimlabError

__all__ = ["LocalBackendError", "Probe", "describe_exit", "die_with_parent", "free_port"]


class LocalBackendError(SimlabError):
    """The embedded server is missing or could not start."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """``preexec_fn`` of a server process: SIGTERM to it when its parent dies."""
    # Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL,
    # so a killed run never leaves a model server behind.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Probe:
    """One probe request sent to a freshly started server, and what came back."""

    name: str
    ok: bool
    latency_s: float
    completion_tokens: int = 0
    prompt_tokens: int = 0
    detail: str = ""

    @property
    def tokens_per_s(self) -> float:
        """Reply tokens per second of the whole request (prompt reading included)."""
        return self.completion_tokens / self.latency_s if self.latency_s > 0 else 0.0

    def text(self) -> str:
        state = "ok" if self.ok else "FAILED"
        size = f": {self.prompt_tokens} prompt + {self.completion_tokens} reply tokens, " \
               f"{self.tokens_per_s:.0f} reply tok/s" if self.completion_tokens else ""
        return f"{self.name}: {state} ({self.latency_s:.2f} s{size}) {self.detail}".rstrip()


def describe_exit(returncode: int | None) -> str:
    """'killed by SIGILL' / 'exited with status 1' / 'running'."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"
