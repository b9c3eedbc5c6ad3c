"""The code of docs/extending.md runs as written: its ``python`` blocks, top to bottom, in one fresh
interpreter (a reader pasting them into one script), from the project root (the docs name files
from there)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

DOC = REPO / "docs" / "extending.md"


def python_blocks(doc: Path) -> list[str]:
    """The document's ``python`` blocks, in order."""
    return re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)


def test_the_guide_has_code_for_each_part() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = python_blocks(DOC)
    assert len(blocks) >= 3, "the guide shows instruments, analyses and endpoint kinds in code"
    for group in ("simlab.instruments", "simlab.analyses", "simlab.backends"):
        assert group in text, f"the guide says how to register by entry point in {group}"


def test_the_guide_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "guide.py"
    script.write_text("\n\n".join(python_blocks(DOC)), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"docs/extending.md's code failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
