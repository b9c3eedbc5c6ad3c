"""``simlab init DIR``: a starter project of one's own.

Writes ``DIR/simlab.toml`` (the embedded default config, pointing at the files beside it),
``DIR/personas.jsonl`` (the three sample personas, to replace with one's own) and
``DIR/prompts/`` (every prompt template, to edit; ``SIMLAB_PROMPTS_DIR`` points simlab at it).
Nothing is overwritten: a DIR that exists and is not empty is refused (exit status 2).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from simlab._files import data_dir, write_text_atomic
from simlab.errors import InputError, exit_status

__all__ = ["CONFIG_NAME", "PERSONAS_NAME", "init_project", "main"]

CONFIG_NAME = "simlab.toml"
PERSONAS_NAME = "personas.jsonl"


def init_project(target: str | Path) -> list[Path]:
    """Write the starter files into ``target`` (created; must be absent or empty); returns them."""
    root = Path(target)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError("exists and is not an empty directory; simlab init writes only into a new one", file=root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        config = (data_dir("configs") / "local.toml").read_text(encoding="utf-8")
        config = config.replace('personas = "personas/sample.jsonl"', f'personas = "{PERSONAS_NAME}"', 1)
        header = (f"# Starter config written by `simlab init`. Run from this directory:\n"
                  f"#   SIMLAB_PROMPTS_DIR=prompts simlab run --config {CONFIG_NAME}\n"
                  f"# Every field is documented in simlab/config.py; configs/vllm.toml shows a GPU vLLM setup.\n")
        written = [write_text_atomic(root / CONFIG_NAME, header + config)]
        shutil.copyfile(data_dir("personas") / "sample.jsonl", root / PERSONAS_NAME)
        written.append(root / PERSONAS_NAME)
        shutil.copytree(data_dir("prompts"), root / "prompts")
        written.append(root / "prompts")
    except OSError as exc:
        raise InputError(f"cannot write the starter project: {exc.strerror or exc}", file=root) from None
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="simlab init",
        description="Write a starter project: simlab.toml (the embedded default config), personas.jsonl "
                    "(sample personas to replace) and prompts/ (every template, to edit).")
    parser.add_argument("dir", metavar="DIR", help="directory to create (must be absent or empty)")
    args = parser.parse_args(argv)

    def body() -> int:
        for path in init_project(args.dir):
            print(f"wrote {path}")
        print(f"next: cd {args.dir} && SIMLAB_PROMPTS_DIR=prompts simlab run --config {CONFIG_NAME} --dry-run")
        return 0

    return exit_status(body)


if __name__ == "__main__":
    sys.exit(main())
