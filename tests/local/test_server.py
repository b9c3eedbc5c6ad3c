"""Embedded-server logic that needs no model run: exit descriptions, model preparation fallback,
the default replica count. (The real-model behaviour is in test_embedded.py.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from simlab.config import default_config
from simlab.local.fleet import EmbeddedBackends, default_replicas
from simlab.local.process import describe_exit
from simlab.local.server import prepared_model


@pytest.mark.parametrize("code,text", [
    (None, "running"), (0, "exited with status 0"), (3, "exited with status 3"),
    (-signal.SIGILL, "killed by SIGILL"), (-signal.SIGSEGV, "killed by SIGSEGV"), (-200, "killed by signal 200"),
])
def test_exit_codes_read_as_words(code, text):
    assert describe_exit(code) == text


def test_requantize_none_serves_the_file_as_given(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert prepared_model(model, None) == (model, None)


def test_a_requantization_that_cannot_be_written_serves_the_shipped_file_and_says_why(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SIMLAB_CACHE_DIR", str(blocker))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    path, why = prepared_model(model, "q8_0")
    assert path == model and "could not requantize" in why and "serving it as shipped" in why


def test_a_requantization_that_fails_serves_the_shipped_file(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("SIMLAB_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"not a model at all")
    path, why = prepared_model(model, "q8_0")
    assert path == model and "could not requantize" in why
    assert not list((tmp_path / "cache" / "models").glob("*.gguf*"))  # nothing half-written is left


def test_one_single_thread_replica_per_core_at_most_four(monkeypatch):
    for cores, replicas in ((1, 1), (2, 2), (8, 4), (None, 1)):
        monkeypatch.setattr("os.cpu_count", lambda c=cores: c)
        assert default_replicas() == replicas


def test_an_external_endpoint_that_stops_answering_gets_a_hint_not_a_server_story():
    backends = EmbeddedBackends(default_config(), base_urls={"local": "http://127.0.0.1:9/v1"})
    text = backends.explain("local")
    assert "hint:" in text and "run the same command again" in text


def test_a_sigkilled_runs_temp_folder_is_removed_at_the_next_start(tmp_path):
    import subprocess
    import sys

    from simlab.local.server import TMP_PREFIX, sweep_orphans

    # a process makes its folder as LocalServer does, then dies by SIGKILL: nothing cleans up
    code = (f"import os, tempfile, time; d = tempfile.mkdtemp(prefix='{TMP_PREFIX}' + str(os.getpid()) + '-'); "
            "open(os.path.join(d, 'server.json'), 'w').write('{}'); print(d, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    orphan = Path(proc.stdout.readline().strip())
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}-abc"  # a running simlab's folder
    live.mkdir()
    assert sweep_orphans(tmp_path) == []  # its owner is alive
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert (orphan / "server.json").exists()
    assert sweep_orphans(tmp_path) == [orphan]
    assert not orphan.exists() and live.exists()
