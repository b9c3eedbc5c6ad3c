"""A new endpoint kind from outside simlab (tests/extensions/backends_ext.py, no edit of simlab):
registered from Python and by a package's entry point, configured in TOML like the built-in kinds,
and real calls through its own transport to the stub server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simlab.config import CONFIGS_DIR, Config, load_config, parse_config
from simlab.errors import ConfigError, LLMError
from simlab.llm import LLMClient
from simlab.llm.backends import BACKENDS
from simlab.llm.config import ModelSpec
from simlab.testing import StubServer
from tests.conftest import REPO, installed_package
from tests.extensions.backends_ext import KEYFILE, KeyFileEndpoint

SECRET = "sk-from-a-mounted-file-4242"


@pytest.fixture
def server() -> Iterator[StubServer]:
    with StubServer(api_key=SECRET) as s:  # answers 401 unless the key from the file arrives
        yield s


@pytest.fixture
def keyfile_kind() -> Iterator[None]:
    BACKENDS.register(KEYFILE)
    try:
        yield
    finally:
        BACKENDS.unregister("keyfile")


def keyfile_toml(tmp_path: Path, url: str) -> Path:
    """The quickstart config with its endpoint of kind ``keyfile``, written as a user would."""
    (tmp_path / "key.txt").write_text(SECRET + "\n")
    text = (CONFIGS_DIR / "local.toml").read_text()
    text = text.replace('kind = "local"          # no base_url: simlab starts the embedded server for the run\n'
                        "max_in_flight = 1       # llama.cpp's server runs one request at a time\nn_ctx = 4096\n",
                        f'kind = "keyfile"\nbase_url = "{url}"\nkey_file = "{tmp_path / "key.txt"}"\n'
                        'tenant = "lab-7"\nmax_attempts = 2\n')
    assert 'kind = "keyfile"' in text
    text = text.replace('personas = "personas/sample.jsonl"', f'personas = "{REPO / "personas" / "sample.jsonl"}"')
    text = text.replace("limit = 12", "limit = 1")
    text = f'out_dir = "{tmp_path / "runs"}"\n' + text
    text = text.replace("[summary]", f'[summary]\ncache_dir = "{tmp_path / "summaries"}"')
    path = tmp_path / "keyfile.toml"
    path.write_text(text)
    return path


def test_a_kind_registered_from_python_loads_from_toml_and_runs_a_session(tmp_path: Path, server: StubServer,
                                                                         keyfile_kind: None) -> None:
    from simlab.run import run_experiment

    config = load_config(keyfile_toml(tmp_path, server.base_url))
    ep = config.endpoints["local"]
    assert isinstance(ep, KeyFileEndpoint) and ep.tenant == "lab-7"
    assert ep.in_flight == 4 and ep.dialect == "json_schema"  # the kind's own defaults
    # stored and read back as it is: its own fields, none of the built-in kinds'
    stored = config.public_dict()["endpoints"]["local"]
    assert stored["key_file"].endswith("key.txt") and "n_ctx" not in stored and "launch" not in stored
    assert parse_config(config.public_dict()) == config
    assert "keyfile" in str(Config.model_json_schema())

    summary = asyncio.run(run_experiment(config, progress=False, report=False))
    assert summary.sessions_completed == summary.sessions_planned > 0 and summary.sessions_failed == 0
    assert len(server.requests) > 0 and all(r.status == 200 for r in server.requests)


async def test_its_transport_sends_the_key_from_the_file(tmp_path: Path, server: StubServer,
                                                         keyfile_kind: None) -> None:
    config = load_config(keyfile_toml(tmp_path, server.base_url))
    async with LLMClient(config.endpoints) as client:
        reply = await client.chat(ModelSpec(endpoint="local", model="m"), [{"role": "user", "content": "hi"}])
    assert reply.text and reply.call.status == "ok"
    (tmp_path / "key.txt").write_text("sk-rotated-wrong")  # read again by a new client: the server refuses it
    async with LLMClient(config.endpoints) as client:
        with pytest.raises(LLMError, match="HTTP 401"):
            await client.chat(ModelSpec(endpoint="local", model="m"), [{"role": "user", "content": "hi"}])


def test_its_config_refuses_another_kinds_field_and_needs_its_own(tmp_path: Path, keyfile_kind: None) -> None:
    path = keyfile_toml(tmp_path, "http://127.0.0.1:9/v1")
    path.write_text(path.read_text().replace('tenant = "lab-7"\n', 'tenant = "lab-7"\nn_ctx = 4096\n'))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == "endpoints.local.n_ctx"
    assert "not a setting of kind 'keyfile' endpoints (it is one of kind 'local')" in str(err.value)
    path.write_text(path.read_text().replace("n_ctx = 4096\n", "").replace("key_file = ", "# key_file = "))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == "endpoints.local.key_file" and "required" in str(err.value)


def _plugin(tmp: Path, entry: str, module: str | None = None, source: str = "") -> Path:
    """A package installed the way pip leaves one: a ``*.dist-info`` folder with its entry points."""
    return installed_package(tmp, "simlab-keyfile", "simlab.backends", [entry], {module: source} if module else None)


def _cli(config: Path, plugin_dir: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    paths = [str(plugin_dir)] if plugin_dir else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(REPO)])}
    return subprocess.run([sys.executable, "-m", "simlab.run", "--config", str(config), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)


def test_a_kind_registered_by_an_entry_point_runs_from_the_cli(tmp_path: Path, server: StubServer) -> None:
    plugin = _plugin(tmp_path / "site", "keyfile = tests.extensions.backends_ext:backend")
    config = keyfile_toml(tmp_path, server.base_url)
    done = _cli(config, plugin)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(server.requests) > 0 and all(r.status == 200 for r in server.requests)

    # without the package the kind is unknown: exit 2 naming the endpoint and the kinds there are
    refused = _cli(config, None, "--dry-run")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "endpoints.local.kind" in refused.stderr
    assert "unknown endpoint kind 'keyfile' (registered: local, vllm, openai, litellm)" in refused.stderr


def test_an_entry_point_registers_in_this_process_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(_plugin(tmp_path, "keyfile = tests.extensions.backends_ext:backend")))
    try:
        BACKENDS.reload_entry_points()
        assert BACKENDS.get("keyfile") is KEYFILE and BACKENDS.names()[-1] == "keyfile"
    finally:
        BACKENDS.unregister("keyfile")


def test_a_broken_backend_package_stops_the_cli_before_any_call(tmp_path: Path, server: StubServer) -> None:
    plugin = _plugin(tmp_path / "site", "gateway = simlab_gateway_broken", "simlab_gateway_broken",
                     "raise ImportError('needs the gateway SDK')\n")
    done = _cli(keyfile_toml(tmp_path, server.base_url), plugin)
    assert done.returncode == 2, done.stderr[-2000:]
    assert ("entry point 'gateway = simlab_gateway_broken' (group simlab.backends, package simlab-keyfile) failed "
            "to import: ImportError: needs the gateway SDK") in done.stderr
    assert server.requests == []
