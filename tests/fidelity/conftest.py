"""Shared fixtures of the fidelity tests: the real human data, imported once per session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from simlab.tables import Tables

REPO = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """``$SIMLAB_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("SIMLAB_SHARED_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def dialogue_eval_dir() -> Path:
    """The Dialogue-Eval CSVs (skips when the shared data are absent)."""
    path = shared_data() / "dialogue_eval"
    if not (path / "FreeTopicRound1.csv").is_file():
        pytest.skip(f"Dialogue-Eval data not found at {path}")
    return path


@pytest.fixture(scope="session")
def dialogue_eval_tables(dialogue_eval_dir: Path) -> Tables:
    """All three Dialogue-Eval rounds imported as human ``Tables``."""
    from simlab.fidelity import import_dialogue_eval

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the importer reports the rows it skips
        return import_dialogue_eval(dialogue_eval_dir)


@pytest.fixture(scope="session")
def dialogue_eval_on_disk(dialogue_eval_tables: Tables, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The imported Dialogue-Eval written in the on-disk form ``load_human`` reads (CSV)."""
    from simlab.fidelity import write_tables

    return write_tables(dialogue_eval_tables, tmp_path_factory.mktemp("dialogue_eval") / "human", "csv")
