"""Damaged run stores (truncated, bytes flipped in the middle, header zeroed): every command that
reads or resumes one stops with exit status 2 naming the file, what is wrong and the salvage
command, without writing to it; ``simlab store salvage`` copies every intact session of a real
run's store into a new run that opens, exports, reports and resumes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simlab.errors import InputError
from simlab.run import run_experiment
from simlab.store import main as store_main
from simlab.store import read_counts
from simlab.store.damage import DamagedStoreError, check_header, quick_check
from simlab.store.salvage import salvage
from simlab.testing import StubServer
from tests.conftest import stub_config
from tests.fidelity.test_io import flat_judgements

SESSION_TABLES = {"sessions": "conversation_id", "conversations": "conversation_id", "turns": "conversation_id",
                  "judgements": "conversation_id", "bdm": "conversation_id", "instruments": "conversation_id",
                  "answers": "conversation_id", "llm_calls": "recorded_with"}


def truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def cut_the_last_tenth(path: Path) -> None:
    os.truncate(path, path.stat().st_size * 9 // 10)


def flip_bytes_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 4096, 7):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_bytes_in_a_page_of_turns(path: Path) -> None:
    """Bytes flipped in the middle of the file may fall in an index (no row lost); these fall in rows."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        page = db.execute("SELECT pageno FROM dbstat WHERE name = 'turns' AND pagetype = 'leaf' ORDER BY pageno"
                          " LIMIT 1 OFFSET 1").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    for i in range((page - 1) * size + size // 2, page * size, 5):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def zero_the_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:100] = bytes(100)
    path.write_bytes(bytes(data))


SESSIONS = 12
DAMAGES: dict[str, Callable[[Path], None]] = {"truncated": truncate_to_half, "flipped": flip_bytes_in_the_middle,
                                              "zeroed header": zero_the_header, "tail cut": cut_the_last_tenth,
                                              "rows flipped": flip_bytes_in_a_page_of_turns}


def _made(tmp: Path, sessions: int, **overrides: object) -> Iterator[tuple[StubServer, object, Path]]:
    with StubServer() as server:
        # 3 participants × 2 domains × the repeats: the study these tests were sized on
        config = stub_config(server, tmp, concurrency=8, limit=3,
                             protocol={"domains": ["unguided", "emotional_wellbeing"]}, **overrides)
        summary = asyncio.run(run_experiment(config.experiment, config.invocation(progress=False, report=False),
                                             run_dir=tmp / "run"))
        assert summary.sessions_completed == sessions and not summary.stopped
        yield server, config, tmp / "run"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StubServer, object, Path]]:
    """A real run's store (stub server, ``SESSIONS`` sessions), the server kept up for resumes."""
    yield from _made(tmp_path_factory.mktemp("made"), SESSIONS, repeats=2)


def damaged_copy(made_run: Path, tmp_path: Path, damage: str) -> Path:
    run = tmp_path / damage.replace(" ", "-")
    run.mkdir()
    shutil.copy(made_run / "store.sqlite", run / "store.sqlite")
    DAMAGES[damage](run / "store.sqlite")
    return run


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_of(store: Path, keys: list[str]) -> dict[str, list[tuple[object, ...]]]:
    """Every row of ``keys``' sessions, table by table, in stored order (model calls without their number)."""
    marks = ", ".join("?" * len(keys))
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        out = {}
        for table, key in SESSION_TABLES.items():
            rows = db.execute(f"SELECT * FROM {table} WHERE {key} IN ({marks}) ORDER BY rowid", keys).fetchall()
            out[table] = [r[1:] for r in rows] if table == "llm_calls" else rows
        return out


@pytest.mark.parametrize("damage", ["truncated", "flipped", "zeroed header"])
def test_every_command_names_the_damaged_store_and_writes_nothing(made, tmp_path, damage, capsys) -> None:
    from simlab.fidelity.__main__ import main as fidelity_main
    from simlab.report.__main__ import main as report_main
    from simlab.run import main as run_main

    run = damaged_copy(made[2], tmp_path, damage)
    store = run / "store.sqlite"
    human = tmp_path / "human.csv"
    flat_judgements().assign(source="human").to_csv(human, index=False)
    before = digest(store)
    commands = {
        "store export": lambda: store_main(["export", str(run), str(tmp_path / "export")]),
        "report --run": lambda: report_main(["--run", str(run), "--out", str(tmp_path / "report.html")]),
        "fidelity analyze --run": lambda: fidelity_main(["analyze", "--human", str(human), "--run", str(run),
                                                         "--out", str(tmp_path / "fidelity.json"), "--n-boot", "0"]),
        "run --resume": lambda: run_main(["--resume", str(run), "--quiet", "--no-report"]),
    }
    for name, command in commands.items():
        capsys.readouterr()
        code = command()
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert f"{store}: not a readable simlab run store: damaged: " in err, (name, err)
        assert f"simlab store salvage {run} {run}-salvaged" in err and "Traceback" not in err, (name, err)
        assert digest(store) == before, f"{name} wrote to the damaged store"
        assert not (tmp_path / "export").exists() and not (tmp_path / "report.html").exists()


def test_what_the_checks_say(made, tmp_path) -> None:
    assert check_header(made[2]) is None
    quick_check(made[2])
    said = {}
    for damage in ("truncated", "flipped", "zeroed header"):
        run = damaged_copy(made[2], tmp_path, damage)
        with pytest.raises(DamagedStoreError) as caught:
            quick_check(run)
        said[damage] = caught.value.what
    assert said["truncated"].startswith("the file is truncated (")
    assert said["zeroed header"] == "its header is not an SQLite header (zeroed or overwritten)"
    assert said["flipped"]  # SQLite's own words for the page it found broken
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "store.sqlite").write_bytes(b"")
    assert check_header(empty) == "the file is empty (0 bytes)"
    with pytest.raises(DamagedStoreError, match=r"damaged: the file is empty \(0 bytes\); nothing was changed\. It holds "
                                                r"nothing: delete .*store\.sqlite and run the command that made it again"):
        quick_check(empty)


# a store cut in half keeps no whole session nor its meta at this size (each table's pages are spread
# over the file): that case is the meta test below; the salvage is shown on a store missing its tail
@pytest.mark.parametrize("damage", [pytest.param("tail cut", marks=pytest.mark.slow), "rows flipped",
                                    pytest.param("flipped", marks=pytest.mark.slow),
                                    pytest.param("zeroed header", marks=pytest.mark.slow)])
def test_salvage_copies_every_intact_session_and_the_new_run_resumes(made, tmp_path, damage, capsys) -> None:
    server, config, made_run = made
    n = SESSIONS
    run = damaged_copy(made_run, tmp_path, damage)
    before = digest(run / "store.sqlite")
    out = tmp_path / "salvaged"
    assert store_main(["salvage", str(run), str(out)]) == 0
    said = capsys.readouterr().out
    assert digest(run / "store.sqlite") == before  # salvage reads a copy
    with sqlite3.connect(out / "store.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        copied = [r[0] for r in db.execute("SELECT conversation_id FROM sessions")]
    lost = n - len(copied)
    assert f"{out}: {len(copied)} of {n} sessions copied, {lost} lost" in said
    assert ("lost sessions: " in said) == bool(lost)
    assert f"to redo what was lost: simlab run --resume {out}" in said
    if damage == "zeroed header":
        assert len(copied) == n and "(read through a rebuilt SQLite header)" in said
    elif damage == "flipped":  # the middle of the file: rows or an index (which loses no session)
        assert len(copied) > 0
    else:
        assert 0 < len(copied) < n
    # every copied session is exactly as it was, row for row
    assert rows_of(out / "store.sqlite", copied) == rows_of(made_run / "store.sqlite", copied)
    # the salvaged run exports, reports and resumes, redoing only what was lost
    assert store_main(["export", str(out), str(tmp_path / "export")]) == 0
    assert read_counts(out).sessions_completed == len(copied)
    summary = asyncio.run(run_experiment(config.experiment, config.invocation(progress=False, report=False),
                                         run_dir=out, base_urls={"local": server.base_url}))
    assert summary.sessions_completed == n and summary.sessions_done_before == len(copied) and not summary.stopped
    with sqlite3.connect(out / "store.sqlite") as db:
        keys = [r[0] for r in db.execute("SELECT conversation_id FROM sessions")]
        assert len(keys) == len(set(keys)) == n
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    from simlab.report.__main__ import main as report_main

    assert report_main(["--run", str(out), "--n-boot", "0"]) == 0 and (out / "report.html").exists()
    again = salvage(run, tmp_path / "again")  # the Python API finds what the command found
    assert again.copied == len(copied) and len(again.lost) == lost


def test_salvage_refuses_an_existing_out_and_a_missing_store(made, tmp_path, capsys) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    assert store_main(["salvage", str(made[2]), str(out)]) == 2
    assert f"{out}: already exists; salvage writes a new run directory" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    with pytest.raises(InputError, match="no run store here"):
        salvage(tmp_path / "nowhere", tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing left behind


def test_salvage_of_a_store_whose_meta_is_lost_says_so_and_writes_nothing(made, tmp_path, capsys) -> None:
    run = damaged_copy(made[2], tmp_path, "truncated")  # a small store: its meta's pages were in the lost half
    assert store_main(["salvage", str(run), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'store.sqlite'}: the run's stored config (the meta table) cannot be read" in err
    assert "nothing was written. Run the experiment again from its config file" in err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated"]
