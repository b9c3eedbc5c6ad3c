"""The ``simlab`` command (simlab/cli.py), ``simlab init`` (simlab/project.py), the data-file lookup
(simlab/_files.py) and the wheel: built, installed in a fresh venv, run from another directory."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from simlab._files import data_dir, data_path
from simlab.cli import COMMANDS, main
from simlab.errors import InputError
from simlab.project import CONFIG_NAME, PERSONAS_NAME, init_project
from tests.conftest import REPO


def test_every_subcommand_dispatches_to_a_main_with_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0, name
        assert "usage:" in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_and_bad_input_exit_2_with_the_reason(tmp_path, capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["store", "export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["report", "--run", str(tmp_path / "nope")]) == 2
    assert main(["autograde", "--run", str(tmp_path), "--sample", "-1"]) == 2  # pydantic option check
    assert "sample" in capsys.readouterr().err


def test_no_command_is_run_and_the_default_config_works_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # configs/ and personas/ are not here: simlab's own copies are used
    assert main(["--dry-run"]) == 0
    assert "participants: 12 × domains: 1 (unguided)" in capsys.readouterr().out
    assert main(["run", "--dry-run", "--limit", "1"]) == 0
    assert not (tmp_path / "runs").exists()


def test_data_path_prefers_the_given_file_then_simlabs_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert data_path("personas/sample.jsonl") == data_dir("personas") / "sample.jsonl"
    (tmp_path / "personas").mkdir()
    (tmp_path / "personas" / "sample.jsonl").write_text("{}\n")
    assert data_path("personas/sample.jsonl") == Path("personas/sample.jsonl")  # the user's own wins
    assert data_path("elsewhere/x.jsonl") == Path("elsewhere/x.jsonl")
    assert data_dir("prompts") == REPO / "prompts"  # an editable install reads the repository


def test_init_writes_a_project_that_runs_and_refuses_a_non_empty_dir(tmp_path, monkeypatch, capsys):
    proj = tmp_path / "proj"
    assert main(["init", str(proj)]) == 0
    assert (proj / CONFIG_NAME).is_file() and (proj / PERSONAS_NAME).is_file()
    assert (proj / "prompts" / "judge" / "grade.j2").is_file()
    assert f'personas = "{PERSONAS_NAME}"' in (proj / CONFIG_NAME).read_text()
    assert "next: cd" in capsys.readouterr().out
    monkeypatch.chdir(proj)
    monkeypatch.setenv("SIMLAB_PROMPTS_DIR", "prompts")
    assert main(["run", "--config", CONFIG_NAME, "--dry-run"]) == 0
    with pytest.raises(InputError, match="not an empty directory"):
        init_project(proj)
    assert main(["init", str(proj)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


@pytest.mark.slow
def test_the_wheel_carries_its_data_and_runs_from_another_directory(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next(dist.glob("simlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("simlab/_data/prompts/judge/grade.j2", "simlab/_data/configs/local.toml",
                   "simlab/_data/personas/sample.jsonl", "simlab/report/templates/report.html.j2"):
        assert needed in names, needed

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, bin_ = venv / "bin" / "python", venv / "bin"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies come from this environment's site-packages (a path, not a site dir: its
    # .pth files, among them the editable simlab's, are not read), simlab from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SIMLAB_PROMPTS_DIR")}
    where = subprocess.run([py, "-c", "import simlab, simlab._files as f; print(simlab.__file__, f.data_dir('prompts'))"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert str(site) in where.stdout and "_data" in where.stdout, where.stdout + where.stderr
    dry = subprocess.run([py, "-m", "simlab.run", "--dry-run"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert "participants: 12 × domains: 1 (unguided)" in dry.stdout
    init = subprocess.run([bin_ / "simlab", "init", "proj"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert init.returncode == 0, init.stderr
    proj_dry = subprocess.run([bin_ / "simlab", "run", "--config", CONFIG_NAME, "--dry-run"], cwd=work / "proj",
                              env={**env, "SIMLAB_PROMPTS_DIR": "prompts"}, capture_output=True, text=True,
                              timeout=300)
    assert proj_dry.returncode == 0, proj_dry.stderr
    assert not (work / "runs").exists() and not (work / "proj" / "runs").exists()
