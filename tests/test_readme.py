"""The README's Python example runs as written, against the stub server (only the config path
is swapped: ``configs/vllm.toml`` with its base URL pointing at the stub)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from simlab.config import CONFIGS_DIR
from simlab.testing import StubServer
from tests.conftest import REPO


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_readme_python_example_runs_against_the_stub(tmp_path):
    blocks = _python_blocks()
    assert blocks and any('load_config("configs/vllm.toml")' in b for b in blocks)
    with StubServer() as server:
        text = (CONFIGS_DIR / "vllm.toml").read_text()
        assert 'base_url = "http://127.0.0.1:8000/v1"' in text
        text = text.replace('base_url = "http://127.0.0.1:8000/v1"', f'base_url = "{server.base_url}"')
        text = text.replace('name = "prismx-vllm"', f'name = "readme"\nout_dir = "{tmp_path / "runs"}"')
        text = text.replace("[summary]", f'[summary]\ncache_dir = "{tmp_path / "summaries"}"')
        cfg = tmp_path / "vllm.toml"
        cfg.write_text(text)
        for block in blocks:
            script = block.replace('"configs/vllm.toml"', repr(str(cfg)))
            script += "\nprint('OK', type(record).__name__ if 'record' in dir() else '')\n"
            env = {**os.environ, "VLLM_API_KEY": "test-key"}
            done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            assert "OK SessionRecord" in done.stdout
