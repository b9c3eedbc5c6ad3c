"""``python -m simlab.serve`` stops on Ctrl-C or SIGTERM and leaves no server process behind.

A real embedded llama.cpp server (the shipped GGUF as it is, ``requantize = "none"``, so no
one-off requantization makes the first run slow), started as a user or a script starts it:
in the foreground (a terminal's Ctrl-C reaches the whole process group), in the background of a
shell without job control (which starts it with SIGINT ignored), or stopped by ``kill``.
The timeouts below only keep a hang from blocking the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.local.test_launch import _group_alive, _launch_toml, make_fake_vllm


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def start_serve(args: list[str], *, sigint_ignored: bool = False, new_group: bool = False) -> subprocess.Popen[str]:
    def preexec() -> None:
        if sigint_ignored:  # what `cmd &` in a script does: Python then keeps SIGINT ignored
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "simlab.serve", *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec,
                            start_new_session=new_group)


def read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float = 300) -> str:
    """The output up to and including the line with ``marker`` (fails if the process ends first)."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                found.set()
                return
        found.set()  # end of output

    threading.Thread(target=read, daemon=True).start()
    if found.wait(timeout_s) and lines and marker in lines[-1]:
        return "".join(lines)
    pytest.fail(f"no {marker!r} from simlab.serve (exit {proc.poll()}):\n{''.join(lines)}")


def _ready(proc: subprocess.Popen[str]) -> str:
    """What serve printed until it is up; the process is killed if it never gets there."""
    try:
        return read_until(proc, "Ctrl-C to stop")
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


def stop_and_check(proc: subprocess.Popen[str], send, children: list[int]) -> str:
    """``send()`` the stop signal; simlab.serve exits 0 and every child is gone. Returns its last output."""
    try:
        send()
        code = proc.wait(timeout=60)
        rest = proc.stdout.read() if proc.stdout else ""
        assert code == 0, rest
        deadline = time.monotonic() + 20  # a killed child is reaped by its parent's wait: normally at once
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c for c in children if _alive(c)], "a server process outlived simlab.serve"
        return rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    text = (REPO / "configs" / "local.toml").read_text()
    assert "n_ctx = 4096\n" in text
    path = tmp_path_factory.mktemp("serve") / "local.toml"
    path.write_text(text.replace("n_ctx = 4096\n", 'n_ctx = 4096\nrequantize = "none"\nreplicas = 1\n', 1))
    return path


@pytest.mark.parametrize("how", ["ctrl-c in a terminal", "sigint, started with it ignored", "sigterm"])
def test_serve_stops_and_takes_its_llama_server_with_it(config, how):
    if how == "ctrl-c in a terminal":  # the terminal signals the foreground group: simlab and its server
        proc = start_serve(["--config", str(config)], new_group=True)
        send = lambda: os.killpg(proc.pid, signal.SIGINT)  # noqa: E731
    elif how == "sigterm":
        proc = start_serve(["--config", str(config)])
        send = lambda: proc.send_signal(signal.SIGTERM)  # noqa: E731
    else:
        proc = start_serve(["--config", str(config)], sigint_ignored=True)
        send = lambda: proc.send_signal(signal.SIGINT)  # noqa: E731
    head = _ready(proc)
    assert "serving 'smollm2-135m' at http://127.0.0.1:" in head, head
    children = _children(proc.pid)
    assert len(children) == 1, children  # the llama.cpp server
    assert "stopping" in stop_and_check(proc, send, children)


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Path:
    """The stand-in ``vllm`` package of test_launch.py (parses vLLM's flags, serves the stub server)."""
    return make_fake_vllm(tmp_path)


def test_serve_with_launch_tables_stops_both_vllm_process_groups(fake_vllm, tmp_path):
    """configs/vllm-cpu.toml's two servers (the stand-in vLLM of test_launch.py): one SIGINT stops both."""
    config = tmp_path / "c.toml"
    config.write_text(_launch_toml(fake_vllm))
    proc = start_serve(["--config", str(config)], sigint_ignored=True)
    head = _ready(proc)
    assert "vLLM server 'vllm' at" in head and "vLLM server 'vllm-ppft' at" in head, head
    leaders = _children(proc.pid)
    assert len(leaders) == 2, leaders
    stop_and_check(proc, lambda: proc.send_signal(signal.SIGINT), leaders)
    assert not [g for g in leaders if _group_alive(g)]  # nor any process of their groups (the engines)


def test_serve_exits_saying_why_when_a_server_dies_under_it(fake_vllm, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(_launch_toml(fake_vllm))
    proc = start_serve(["--config", str(config)])
    try:
        read_until(proc, "Ctrl-C to stop")
        leaders = _children(proc.pid)
        os.killpg(leaders[0], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        out = proc.stdout.read() if proc.stdout else ""
        assert "error: the vLLM server 'vllm' killed by SIGKILL" in out, out
        deadline = time.monotonic() + 20
        while any(_group_alive(g) for g in leaders) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [g for g in leaders if _group_alive(g)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
