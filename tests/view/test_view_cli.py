"""``simlab view`` as a user starts it: a real process that prints its URL and serves until stopped,
warns when bound beyond this machine, refuses a path that is not a run, and ``--check``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "view_bench.py"


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "simlab.view", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return err


def test_the_command_prints_its_url_and_serves_the_run(view_run: Path) -> None:
    proc = _start(str(view_run), "--port", "0")
    try:
        line = proc.stdout.readline()
        assert line.startswith("simlab view: http://127.0.0.1:"), line
        url = line.split()[2].rstrip("/")
        with urllib.request.urlopen(f"{url}/runs/{view_run.name}/sessions", timeout=30) as r:
            assert r.status == 200 and view_run.name in r.read().decode()
    finally:
        err = _stop(proc)
    assert "warning" not in err and "Traceback" not in err


def test_another_host_is_served_with_a_warning(view_run: Path) -> None:
    proc = _start(str(view_run), "--host", "0.0.0.0", "--port", "0")
    try:
        line = proc.stdout.readline()
        assert "http://0.0.0.0:" in line, line
    finally:
        err = _stop(proc)
    assert "warning: serving on 0.0.0.0: anyone who can reach this address can read the runs" in err


def test_a_path_that_is_not_a_run_exits_2_naming_it(tmp_path: Path, view_run: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "simlab.view", str(view_run), str(tmp_path), "--port", "0"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2
    assert f"{tmp_path.resolve()}: not a simlab run directory (no store.sqlite in it)" in out.stderr
    assert out.stdout == ""


def test_check_fetches_each_page_kind_and_exits(view_run: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "simlab", "view", "--check", str(view_run)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    fetched = [line.split()[-1] for line in out.stdout.splitlines()[:-1]]
    assert {"/", f"/runs/{view_run.name}", f"/runs/{view_run.name}/sessions"} <= set(fetched)
    assert all(line.startswith("200 ") for line in out.stdout.splitlines()[:-1])
    assert out.stdout.splitlines()[-1] == "OK"


def test_the_benchmark_runs_on_a_tiny_store(view_run: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--sessions", "60", "--reps", "1", "--template", str(view_run),
                          "--work", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["rows"]["sessions"] == 60 and result["rows"]["failures"] == 1
    for name in ("first_page", "filter", "sorted", "run_page"):
        assert result["pages"][name]["status"] == 200, result["pages"][name]
        assert result["pages"][name]["median_ms"] > 0
    assert 0 < result["memory_mb"]["VmRSS"] <= result["memory_mb"]["VmHWM"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # two more processes (the shell's viewer and --check); the default tests start the same command
def test_the_readme_view_commands_run_as_shown(view_run: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command, shown = re.search(r"```text\n\$ (simlab view .*?)\n(simlab view: .*?)\n```", readme).groups()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    # the documented port, swapped for a free one so that tests running side by side do not collide
    port = str(_free_port())
    line = command.replace("runs/<run_id>", str(view_run)).replace("8765", port)
    proc = subprocess.Popen(line, shell=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().rstrip("\n") == shown.replace("8765", port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the shell and the viewer it started: this test's own group
        proc.communicate(timeout=10)
    check = next(c for c in re.findall(r"```bash\n(simlab view --check .*?)\n```", readme))
    out = subprocess.run(check.replace("runs/<run_id>", str(view_run)).replace(" [--human PATH]", ""), shell=True,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "OK", out.stderr


def test_a_store_that_cannot_be_read_exits_2_naming_it(tmp_path: Path) -> None:
    run = tmp_path / "damaged"
    run.mkdir()
    (run / "store.sqlite").write_text("not a database\n")
    out = subprocess.run([sys.executable, "-m", "simlab.view", str(run), "--port", "0"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and out.stdout == ""
    assert f"{run.resolve() / 'store.sqlite'}: not a readable simlab run store" in out.stderr
    assert (run / "store.sqlite").read_text() == "not a database\n"
