"""``python -m simlab.run`` as a user runs it: real subprocesses, a real stub server process."""

from __future__ import annotations

import hashlib
import html
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simlab.config import CONFIGS_DIR
from tests.conftest import REPO

SAMPLE = (REPO / "personas" / "sample.jsonl").read_text().splitlines()


def cli(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "simlab.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def stub_process():
    """The stub server as its own process (so a killed CLI cannot take it down)."""
    proc = subprocess.Popen([sys.executable, "-m", "simlab.testing", "--delay", "0.02"], stdout=subprocess.PIPE,
                            text=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:")
    yield url
    proc.terminate()
    proc.wait(10)


def stub_toml(tmp_path: Path, url: str, **extra: str) -> Path:
    text = (CONFIGS_DIR / "local.toml").read_text()
    text = text.replace('kind = "local"          # no base_url: simlab starts the embedded server for the run',
                        f'kind = "vllm"\nbase_url = "{url}"')
    text = text.replace("n_ctx = 4096\n", "")  # the embedded server's setting: not one of a vLLM endpoint
    text = text.replace("max_in_flight = 1       # llama.cpp's server runs one request at a time", "max_in_flight = 8")
    text = text.replace('personas = "personas/sample.jsonl"', f'personas = "{REPO / "personas" / "sample.jsonl"}"')
    text = f'out_dir = "{tmp_path / "runs"}"\n' + text
    # the CLI tests' study: the quickstart as it was, 3 personas × 2 domains (today's runs 12 × 1)
    text = text.replace('domains = ["unguided"]', 'domains = ["unguided", "emotional_wellbeing"]')
    extra = {"limit": "3", **extra}
    for key, value in extra.items():
        text = text.replace(f"{key} = ", f"{key} = {value}  # was ", 1)
    path = tmp_path / "stub.toml"
    path.write_text(text)
    return path


def test_help_reads_like_docs():
    out = cli("--help")
    assert out.returncode == 0
    for word in ("--config", "--personas", "--limit", "--domains", "--concurrency", "--seed", "--out", "--shard",
                 "--resume", "--dry-run", "--repeats", "--ablate-persona", "exit status", "embedded"):
        assert word in out.stdout


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, stub_process):
    cfg = stub_toml(tmp_path, stub_process)
    out = cli("--config", str(cfg), "--dry-run", "--limit", "2")
    assert out.returncode == 0, out.stderr
    assert "participants: 2 × domains: 2" in out.stdout and "expected model calls" in out.stdout
    assert not (tmp_path / "runs").exists()
    more = cli("--config", str(cfg), "--dry-run", "--limit", "2", "--repeats", "3", "--ablate-persona")
    assert more.returncode == 0, more.stderr
    assert "sessions: 24 (3 repeat(s) × with and without persona)" in more.stdout, more.stdout
    assert "simulator memory: session; letters: by_position" in more.stdout
    bad = cli("--config", str(cfg), "--dry-run", "--repeats", "0")
    assert bad.returncode == 2 and "--repeats" in bad.stderr and "greater than or equal to 1" in bad.stderr, bad.stderr


def test_cli_run_writes_store_and_summary(tmp_path, stub_process):
    cfg = stub_toml(tmp_path, stub_process)
    out = cli("--config", str(cfg), "--limit", "2", "--domains", "values", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "sessions: 2 completed, 0 failed, of 2 planned" in out.stdout
    assert "tokens per arm: GEN=" in out.stdout
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "store.sqlite").exists()
    again = cli("--config", str(cfg), "--limit", "2", "--domains", "values", "--quiet")
    assert "(2 were already done)" in again.stdout  # same command: same run, nothing redone
    # the command is kept as typed, not as the path of run.py
    typed = shlex.join([Path(sys.executable).name, "-m", "simlab.run", "--config", str(cfg), "--limit", "2",
                        "--domains", "values", "--quiet"])
    with sqlite3.connect(run_dirs[0] / "store.sqlite") as db:
        meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
    assert meta["command"] == typed and meta["resumes"][-1]["command"] == typed
    assert f"Command: <code>{html.escape(typed)}</code>" in (run_dirs[0] / "report.html").read_text()
    _damaged_stored_config_is_named_on_resume(tmp_path, run_dirs[0])


def _damaged_stored_config_is_named_on_resume(tmp_path: Path, run_dir: Path) -> None:
    cases = [("{not json", "field 'meta.config': the stored value is not valid JSON"),
             ("42", "field 'meta.config': "),
             (None, "field 'meta.config.protocol.max_turns': ")]
    for i, (value, needle) in enumerate(cases):
        copy = tmp_path / f"damaged-{i}"
        copy.mkdir()
        shutil.copy(run_dir / "store.sqlite", copy / "store.sqlite")
        with sqlite3.connect(copy / "store.sqlite") as db:
            if value is None:
                config = json.loads(db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
                config["protocol"]["max_turns"] = "many"
                value = json.dumps(config)
            db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (value,))
        before = (copy / "store.sqlite").read_bytes()
        out = cli("--resume", str(copy))
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert str(copy / "store.sqlite") in out.stderr
        assert (copy / "store.sqlite").read_bytes() == before


def _completed(store: Path) -> list[str]:
    if not store.exists():
        return []
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
        try:
            return [r[0] for r in db.execute("SELECT conversation_id FROM sessions")]
        except sqlite3.OperationalError:
            return []


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, stub_process):
    cfg = stub_toml(tmp_path, stub_process)
    args = [sys.executable, "-m", "simlab.run", "--config", str(cfg), "--limit", "6", "--concurrency", "2",
            "--quiet", "--no-report"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    store = None
    while time.monotonic() < deadline:
        dirs = list((tmp_path / "runs").glob("*/store.sqlite")) if (tmp_path / "runs").exists() else []
        if dirs and len(_completed(dirs[0])) >= 3:
            store = dirs[0]
            break
        time.sleep(0.05)
    assert store is not None, "the run never completed 3 sessions"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = _completed(store)
    assert 3 <= len(before) < 12, f"killed too late to test a resume ({len(before)} sessions done)"
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    after = _completed(store)
    assert len(after) == len(set(after)) == 12
    assert set(before) <= set(after)
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        per_conv = db.execute("SELECT conversation_id, count(*) FROM judgements GROUP BY conversation_id").fetchall()
        assert len(per_conv) == 12 and {n for _, n in per_conv} == {4}
        assert db.execute("SELECT count(*) FROM conversations").fetchone()[0] == 12


def _bad_persona_file(tmp_path: Path, mutate) -> Path:
    rows = [json.loads(line) for line in SAMPLE[:3]]
    lines = mutate(rows)
    path = tmp_path / "bad_personas.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _dump(rows):
    return [json.dumps(r) for r in rows]


def _set(i, key, value):
    def f(rows):
        rows[i][key] = value
        return _dump(rows)
    return f


def _drop(i, key):
    def f(rows):
        del rows[i][key]
        return _dump(rows)
    return f


def _pref(i, value):
    def f(rows):
        rows[i]["stated_prefs"]["safety"] = value
        return _dump(rows)
    return f


PERSONA_CASES = [
    ("malformed json line", lambda rows: _dump(rows)[:1] + ['{"persona_id": "x", '] + _dump(rows)[2:], "2", None),
    ("missing field", _drop(1, "self_description"), "2", "self_description"),
    ("pref out of range", _pref(2, 150), "3", "stated_prefs.safety"),
    ("duplicate persona id", _set(2, "persona_id", SAMPLE and json.loads(SAMPLE[0])["persona_id"]), "3", "persona_id"),
    ("wrong type", _set(0, "stated_prefs", "high"), "1", "stated_prefs"),
    ("unknown field", _set(1, "favourite_colour", "blue"), "2", "favourite_colour"),
]


@pytest.mark.parametrize("case,mutate,line,field", PERSONA_CASES, ids=[c[0] for c in PERSONA_CASES])
def test_bad_personas_exit_2_naming_file_line_field(tmp_path, case, mutate, line, field):
    path = _bad_persona_file(tmp_path, mutate)
    out = cli("--personas", str(path), "--out", str(tmp_path / "runs"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{path}:{line}" in out.stderr
    if field:
        assert field in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


CONFIG_CASES = [
    ("unknown key", lambda t: "colour = 1\n" + t, "colour"),
    ("bad value", lambda t: t.replace("concurrency = 6", "concurrency = -1"), "concurrency"),
    ("bad domain", lambda t: t.replace('domains = ["unguided"]', 'domains = ["sport"]'),
     "protocol.domains[0]"),
    ("unknown endpoint", lambda t: t.replace('[judge]\nendpoint = "local"', '[judge]\nendpoint = "gpu"'), "gpu"),
    # the records hold bids up to $10: a larger scale is refused before anything runs
    ("wtp above the records' cap", lambda t: t.replace("context_budget_tokens = 3000",
                                                        "context_budget_tokens = 3000\nwtp_max = 20"),
     "protocol.wtp_max"),
    # refused up front, file and field named, nothing written
    ("system prompt escaping the prompt folder", lambda t: t.replace('system_prompt = "arms/generic.j2"',
                                                                      'system_prompt = "../../etc/passwd"'),
     "arms[0].system_prompt"),
    ("system prompt as an absolute path", lambda t: t.replace('system_prompt = "arms/generic.j2"',
                                                              'system_prompt = "/etc/hostname"'),
     "arms[0].system_prompt"),
    ("system prompt that does not exist", lambda t: t.replace('system_prompt = "arms/generic.j2"',
                                                              'system_prompt = "arms/missing.j2"'),
     "arms[0].system_prompt"),
    # simulator variants: one id twice, or variants beside a [simulator] table
    ("variant id used twice", lambda t: t.replace("[simulator]\n", '[[simulators]]\nid = "a"\n')
     + '\n[[simulators]]\nid = "a"\n', "simulators[1].id"),
    ("[simulator] and [[simulators]]", lambda t: t + '\n[[simulators]]\nid = "a"\n', "field 'simulators'"),
    ("negative seed", lambda t: t.replace("seed = 0", "seed = -7"), "seed"),
    ("seed above 2^63", lambda t: t.replace("seed = 0", f"seed = {2**64}"), "seed"),
    ("base_url that is not a URL", lambda t: t.replace(
        'kind = "local"          # no base_url: simlab starts the embedded server for the run',
        'kind = "local"\nbase_url = "localhost-8000"'), "endpoints.local.base_url"),
    ("run name with a path", lambda t: t.replace('name = "quickstart"', 'name = "../../escaped"'), "name"),
    ("empty run name", lambda t: t.replace('name = "quickstart"', 'name = ""'), "name"),
    ("unset API key variable", lambda t: t.replace(
        'kind = "local"          # no base_url: simlab starts the embedded server for the run',
        'kind = "local"\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "SIMLAB_TEST_KEY_NOT_SET"'),
     "endpoints.local.api_key_env"),
]


@pytest.mark.parametrize("case,mutate,needle", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_exit_2(tmp_path, case, mutate, needle):
    path = tmp_path / "bad.toml"
    path.write_text(mutate((CONFIGS_DIR / "local.toml").read_text()))
    out = cli("--config", str(path), "--out", str(tmp_path / "runs"))
    assert out.returncode == 2, out.stderr
    assert str(path) in out.stderr and needle in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,needle", [
    (["--shard", "3/2"], "--shard"),
    (["--domains", "sport"], "field '--domains': Input should be 'unguided'"),
    (["--personas", "/nonexistent/p.jsonl"], "/nonexistent/p.jsonl"),
    (["--limit", "0"], "limit"),
    (["--domains", ""], "at least one domain"),
    (["--human", "/nonexistent/human"], "/nonexistent/human"),
])
def test_bad_arguments_exit_2(tmp_path, args, needle):
    out = cli(*args, "--out", str(tmp_path / "runs"))
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_with_different_config_is_refused_and_run_untouched(tmp_path, stub_process):
    cfg = stub_toml(tmp_path, stub_process)
    first = cli("--config", str(cfg), "--limit", "1", "--domains", "values", "--quiet", "--no-report")
    assert first.returncode == 0, first.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    digest = hashlib.sha256((run_dir / "store.sqlite").read_bytes()).hexdigest()
    other = tmp_path / "other.toml"
    other.write_text(cfg.read_text().replace("seed = 0", "seed = 5"))
    out = cli("--resume", str(run_dir), "--config", str(other), "--quiet")
    assert out.returncode == 2
    assert "seed" in out.stderr and "different config" in out.stderr
    assert hashlib.sha256((run_dir / "store.sqlite").read_bytes()).hexdigest() == digest


def test_ctrl_c_stops_cleanly_keeping_completed_sessions(tmp_path, stub_process):
    cfg = stub_toml(tmp_path, stub_process)
    args = [sys.executable, "-m", "simlab.run", "--config", str(cfg), "--limit", "6", "--concurrency", "1",
            "--quiet", "--no-report"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    store = None
    while time.monotonic() < deadline:
        found = list((tmp_path / "runs").glob("*/store.sqlite")) if (tmp_path / "runs").exists() else []
        if found and len(_completed(found[0])) >= 2:
            store = found[0]
            break
        time.sleep(0.05)
    assert store is not None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in out + err and "Traceback" not in err
    done = _completed(store)
    assert 2 <= len(done) < 12 and len(done) == len(set(done))
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM conversations").fetchone()[0] == len(done)


def _start_stub(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "simlab.testing", "--delay", "0.01", *args],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


def _failures(store: Path) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM failures").fetchone()[0]


@pytest.mark.parametrize("how", ["exit", "503", "hang", "malformed"])
def test_a_backend_that_breaks_down_stops_the_run_and_loses_nothing(tmp_path, how):
    # 3 personas x 2 domains; the backend breaks after ~1.5 sessions' worth of calls (malformed: every
    # later reply is a 200 that is not a completion)
    stub, url = _start_stub("--break-after", "40", "--break-how", how)
    port = url.split(":")[2].split("/")[0]
    cfg = stub_toml(tmp_path, url)
    cfg.write_text(cfg.read_text().replace(
        'base_url = "', 'timeout_s = 2\nmax_attempts = 3\ndead_after_s = 2\nbase_url = "', 1))
    args = ("--config", str(cfg), "--concurrency", "2", "--quiet", "--no-report")
    try:
        out = cli(*args, timeout=120)
    finally:
        stub.kill()
        stub.wait(10)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "stopped early" in out.stdout and "endpoint 'local'" in out.stdout
    if how == "malformed":
        assert "answers, but never in a usable shape: nothing usable came back from it for " in out.stdout, out.stdout
        assert 'the last reply: a body that is not JSON (Expecting \',\' delimiter at character 54): {"detail": "Not Found"' \
            in out.stdout, out.stdout
    else:
        cause = {"exit": "the connection was refused or dropped", "503": "HTTP 503", "hang": "no reply within 2 s"}[how]
        assert f"stopped answering: {cause}, " in out.stdout, out.stdout  # the breakdown, named as it happened
    assert "run the same command again" in out.stdout and "Traceback" not in out.stderr
    store = next((tmp_path / "runs").glob("*/store.sqlite"))
    done = _completed(store)
    assert len(done) < 6 and _failures(store) == 0  # the sessions in flight were not marked failed
    # the backend is back (same address): the plain same command does the rest
    stub, _ = _start_stub("--port", port)
    try:
        again = cli(*args, timeout=120)
    finally:
        stub.terminate()
        stub.wait(10)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"sessions: 6 completed, 0 failed, of 6 planned ({len(done)} were already done)" in again.stdout
    assert sorted(_completed(store)) == sorted(set(_completed(store))) and _failures(store) == 0


def test_an_endpoint_that_refuses_connections_stops_the_run_at_once(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    cfg = stub_toml(tmp_path, url)
    cfg.write_text(cfg.read_text().replace('base_url = "', 'dead_after_s = 1\nbase_url = "', 1))
    out = cli("--config", str(cfg), "--quiet", "--no-report", timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"endpoint 'local' ({url}) stopped answering: the connection was refused or dropped" in out.stdout
    assert "sessions: 0 completed, 0 failed, of 6 planned" in out.stdout


def _bad_inputs(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(case, arguments, text the message must hold) for inputs that once gave tracebacks."""
    (tmp / "latin1.toml").write_bytes((CONFIGS_DIR / "local.toml").read_bytes().replace(b"quickstart", b"quick\xe9"))
    (tmp / "latin1.jsonl").write_bytes(b'{"persona_id": "caf\xe9"}\n')
    (tmp / "deep.jsonl").write_text('{"persona_id": "p", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (tmp / "a-file").write_text("not a directory")
    for name, data in (("zero", b""), ("junk", b"SQLite format 3\x00" + b"\x00" * 40), ("text", b"hello")):
        (tmp / name).mkdir()
        (tmp / name / "store.sqlite").write_bytes(data)
    line = (CONFIGS_DIR / "local.toml").read_text().splitlines().index('name = "quickstart"') + 1
    return [
        ("non-UTF-8 config", ["--config", str(tmp / "latin1.toml")], f"latin1.toml:{line}: not UTF-8"),
        ("non-UTF-8 personas", ["--personas", str(tmp / "latin1.jsonl")], "latin1.jsonl:1: not UTF-8"),
        ("deeply nested persona JSON", ["--personas", str(tmp / "deep.jsonl")], "nested too deeply"),
        ("--out is a file", ["--out", str(tmp / "a-file")], "field '--out': is a file"),
        ("--resume on a zero-byte store", ["--resume", str(tmp / "zero")], "not a readable simlab run store"),
        ("--resume on a damaged store", ["--resume", str(tmp / "junk")], "not a readable simlab run store"),
        ("--resume on a text file", ["--resume", str(tmp / "text")], "not a readable simlab run store"),
    ]


def test_inputs_that_gave_tracebacks_exit_2_and_change_nothing(tmp_path):
    for case, args, needle in _bad_inputs(tmp_path):
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        out = cli(*args, "--dry-run") if "--out" in args else cli(*args)
        assert out.returncode == 2, (case, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr, (case, out.stderr)
        after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        assert after == before, case  # nothing created or changed


def test_four_shard_processes_merge_into_exactly_the_single_process_run(tmp_path):
    from simlab.store import load_run
    from simlab.testing import StubServer

    def rows(run_dir: Path) -> list[tuple]:
        j = load_run(run_dir).judgements.sort_values(["conversation_id", "arm"])
        return [tuple(r) for r in j.astype(str).itertuples(index=False)]

    # a deterministic stub answers each request from its body alone, as one process would see it
    with StubServer(deterministic=True) as server:
        cfg = stub_toml(tmp_path, server.base_url, limit="8")
        common = ["--config", str(cfg), "--domains", "values", "--no-report", "--quiet"]
        single = cli(*common, "--out", str(tmp_path / "single"))
        assert single.returncode == 0, single.stderr
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs = [subprocess.Popen([sys.executable, "-m", "simlab.run", *common, "--shard", f"{i}/4",
                                   "--out", str(tmp_path / "shards")], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
    shard_dirs = sorted((tmp_path / "shards").glob("quickstart-*-shard*of4"))
    assert len(shard_dirs) == 4
    merged = subprocess.run([sys.executable, "-m", "simlab.store", "merge", str(tmp_path / "merged"),
                             *map(str, shard_dirs)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert merged.returncode == 0, merged.stderr
    (single_dir,) = (tmp_path / "single").glob("quickstart-*")
    expected = rows(single_dir)
    assert len(expected) == 8 * 4
    assert rows(tmp_path / "merged") == expected
    # each participant ran in exactly one shard
    per_shard = [set(load_run(d).conversations["participant_id"]) for d in shard_dirs]
    assert sum(len(s) for s in per_shard) == len(set().union(*per_shard)) == 8


def test_a_participant_keeps_its_shard_when_the_persona_file_changes():
    from simlab.personas import load_persona_set
    from simlab.run import select

    people = load_persona_set(REPO / "personas" / "sample.jsonl")
    shards = [{p.persona_id for p in select(people, limit=None, shard=(i, 3))} for i in range(3)]
    assert set().union(*shards) == {p.persona_id for p in people} and sum(map(len, shards)) == len(people)
    # reordered, and with a participant removed: everyone else stays where they were
    changed = list(reversed(people))[1:]
    again = [{p.persona_id for p in select(changed, limit=None, shard=(i, 3))} for i in range(3)]
    assert all(a <= s for a, s in zip(again, shards))
