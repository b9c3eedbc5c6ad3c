"""Generated malformed inputs through the CLIs: every one exits 2 with a message that
names the file (and its line or field where it has one), prints no traceback, and creates or
changes no file.

The commands run in this process (``main(argv)``, exactly what ``python -m …`` calls) so that
hundreds of cases stay fast; ``test_run_cli.py`` runs the same paths as real subprocesses.
The arms' endpoint is a closed port: a case that slipped through validation would create its
run store and fail on the network instead, and the test would say which.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from simlab.config import CONFIGS_DIR
from tests.conftest import REPO
from tests.fidelity.test_io import flat_judgements

SAMPLE = (REPO / "personas" / "sample.jsonl").read_text(encoding="utf-8").splitlines()


@dataclass
class Case:
    family: str
    name: str
    argv: list[str]
    needles: list[str]  # every one must appear in stderr (the file, and line/field where known)
    main: str = "run"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_config(tmp: Path) -> str:
    text = (CONFIGS_DIR / "local.toml").read_text()
    text = text.replace('kind = "local"          # no base_url: simlab starts the embedded server for the run',
                        f'kind = "vllm"\nbase_url = "http://127.0.0.1:{_closed_port()}/v1"')
    text = text.replace("n_ctx = 4096\n", "")  # the embedded server's setting: not one of a vLLM endpoint
    text = text.replace('personas = "personas/sample.jsonl"', f'personas = "{REPO / "personas" / "sample.jsonl"}"')
    return f'out_dir = "{tmp / "runs"}"\n' + text


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


# ------------------------------------------------------------------------------------ configs

# (line to change, replacement, field the message must name)
CONFIG_VALUES: list[tuple[str, str, str]] = [
    *[("seed = 0", f"seed = {v}", "seed") for v in ("-7", "18446744073709551616", '"x"', "1.5", "true")],
    *[("limit = 12", f"limit = {v}", "limit") for v in ("-1", '"three"', "2.5")],
    *[("concurrency = 6", f"concurrency = {v}", "concurrency") for v in ("0", "-3", '"many"')],
    *[('name = "quickstart"', f"name = {v}", "name") for v in ('"../../escaped"', '""', '"a/b"', "3", '"x\\u0000y"')],
    *[("min_turns = 1", f"min_turns = {v}", "turns") for v in ("0", "-1", "99", '"two"')],
    *[("max_turns = 2", f"max_turns = {v}", "max_turns") for v in ("0", "-4", '"two"')],
    *[("context_budget_tokens = 3000", f"context_budget_tokens = {v}", "context_budget_tokens") for v in ("0", "-5", '"big"')],
    *[('domains = ["unguided"]', f"domains = {v}", "domains")
      for v in ('["nope"]', "[]", '"values"', "[1]", '["values", "values"]')],
    *[('rendering = "profile"', f"rendering = {v}", "rendering") for v in ('"bogus"', "7")],
    *[("sampling = { temperature = 0.8, max_tokens = 48 }", f"sampling = {v}", "sampling")
      for v in ("{ temperature = -1, max_tokens = 48 }", "{ temperature = 0.8, max_tokens = 0 }",
                "{ temperature = 0.8, max_tokens = -1 }", "{ temperature = 0.8, colour = 1 }", '"hot"')],
    *[('endpoint = "local"\nmodel = "smollm2-135m"\nrendering', f'endpoint = {v}\nmodel = "smollm2-135m"\nrendering', "endpoint")
      for v in ('"nowhere"', '""')],
    *[('system_prompt = "arms/generic.j2"', f"system_prompt = {v}", "system_prompt")
      for v in ('"../../etc/passwd"', '"/etc/hostname"', '"arms/missing.j2"', '""')],
    *[('personalisation = "none"\ndescription = "Generic', f'personalisation = {v}\ndescription = "Generic', "personalisation")
      for v in ('"everything"', "1")],
    ('id = "STYLE"', 'id = "GEN"', "arms"),
    ('id = "STYLE"', 'id = ""', "id"),
    *[("base_url = ", f"base_url = {v}  # ", "base_url") for v in ('"not a url"', '"ftp://example.org/v1"', '""', "5")],
    *[('kind = "vllm"', f"kind = {v}", "kind") for v in ('"magic"', "0")],
    *[("max_in_flight = 1 ", f"max_in_flight = {v} ", "max_in_flight") for v in ("0", "-2", '"x"')],
    # the embedded server's context window, given to the vLLM endpoint: named as another kind's setting
    *[("max_in_flight = 1 ", f"n_ctx = {v}\nmax_in_flight = 1 ", "n_ctx") for v in ("0", '"big"', "4096")],
    *[("personas = ", f"personas = {v}  # ", "personas") for v in ('"/nonexistent/p.jsonl"', "3")],
    ("seed = 0", 'seed = 0\ncolour = "blue"', "colour"),
    ("max_turns = 2", "max_turns = 2\nturns_please = 3", "turns_please"),
    ("[judge]", '[judge]\napi_key_env = "SIMLAB_FUZZ_SURELY_UNSET_KEY"', "api_key_env"),
    ("seed = 0", "seed = 0\nmax_gen_error_rate = 2", "max_gen_error_rate"),
    ("seed = 0", "seed = 0\nmax_gen_error_rate = -0.1", "max_gen_error_rate"),
    ("context_budget_tokens = 3000", "context_budget_tokens = 3000\nwtp_max = 50", "wtp_max"),
    ("context_budget_tokens = 3000", "context_budget_tokens = 3000\nwtp_max = -1", "wtp_max"),
]

# (how the file is broken, function of the base text → (bytes, line the message must name or None))
CONFIG_SYNTAX: list[tuple[str, Callable[[str], tuple[bytes, int | None]]]] = [
    ("unclosed string", lambda t: (t.replace('name = "quickstart"', 'name = "quickstart'), _line_of(t, 'name = "'))),
    ("duplicate key", lambda t: (t.replace("seed = 0", "seed = 0\nseed = 1"), _line_of(t, "seed = 0") + 1)),
    ("unclosed table header", lambda t: (t.replace("[protocol]", "[protocol"), _line_of(t, "[protocol]"))),
    ("bare word value", lambda t: (t.replace("limit = 12", "limit = three"), _line_of(t, "limit = 12"))),
    ("non-UTF-8 byte", lambda t: (t.replace("quickstart", "quick\udce9start").encode("utf-8", "surrogateescape"),
                                  _line_of(t, 'name = "'))),
    ("NUL byte", lambda t: (t.replace("limit = 12", "limit = 12\x00").encode(), _line_of(t, "limit = 12"))),
    ("cut mid-table", lambda t: (t[: t.index("[endpoints.local]") + 12], None)),
    ("no arms", lambda t: (t[: t.index("# GEN: the generic")], None)),
    ("one arm", lambda t: (t[: t.index("# PROMPT: the same")], None)),
    ("empty file", lambda t: (b"", None)),
    ("a JSON file", lambda t: (b'{"name": "x"}', None)),
    ("arms as a table", lambda t: (t.replace("[[arms]]", "[arms]", 1), None)),
]


def config_cases(tmp: Path) -> list[Case]:
    base = _base_config(tmp)
    cases = []
    for i, (old, new, field) in enumerate(CONFIG_VALUES):
        assert old in base, old
        path = tmp / f"config-{i:03d}.toml"
        path.write_text(base.replace(old, new, 1))
        cases.append(Case("config", f"{new.splitlines()[-1] if old == 'seed = 0' else new}", ["--config", str(path)],
                          [str(path), field]))
    for i, (name, make) in enumerate(CONFIG_SYNTAX):
        data, line = make(base)
        path = tmp / f"syntax-{i:03d}.toml"
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        cases.append(Case("config", name, ["--config", str(path)], [f"{path}:{line}:" if line else str(path)]))
    return cases


# ------------------------------------------------------------------------------------ personas


def _persona_edit(line: int, edit: Callable[[dict], object]) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        out = list(lines)
        record = json.loads(out[line - 1])
        changed = edit(record)
        out[line - 1] = json.dumps(record if changed is None else changed)
        return out
    return apply


def _replace_line(k: int, make: Callable[[str], str]) -> Callable[[list[str]], list[str]]:
    return lambda lines: [*lines[:k - 1], make(lines[k - 1]), *lines[k:]]


def _edited(line: str, old: str, new: str) -> str:
    assert old in line, old  # a fuzz edit that changes nothing would test nothing
    return line.replace(old, new, 1)


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda r: r.__setitem__(key, value)


# (name, line the message must name, field the message must name or None, edit of the sample's lines)
PERSONA_CASES: list[tuple[str, int | None, str | None, Callable[[list[str]], list[str]]]] = [
    *[(f"truncated JSON on line {k}", k, None, _replace_line(k, lambda line: line[:40]))
      for k in (1, 5, 12)],
    *[(f"persona_id missing on line {k}", k, "persona_id", _persona_edit(k, lambda r: r.pop("persona_id") and None))
      for k in (2, 9)],
    *[(f"persona_id = {v!r}", 3, "persona_id", _persona_edit(3, _set("persona_id", v))) for v in (5, "", None, ["a"])],
    ("duplicate persona_id", 4, "persona_id", _persona_edit(4, _set("persona_id", "sample01"))),
    *[(f"stated_prefs.values = {v!r}", 6, "stated_prefs", _persona_edit(6, lambda r, v=v: r["stated_prefs"].__setitem__("values", v)))
      for v in ("high", 150, -1, None)],
    ("stated_prefs is a list", 7, "stated_prefs", _persona_edit(7, _set("stated_prefs", [1, 2]))),
    *[(f"line is {kind}", 8, None, _replace_line(8, lambda line, v=v: json.dumps(v))) for kind, v in
      (("a JSON array", [1, 2]), ("a JSON string", "persona"), ("JSON null", None), ("a number", 3))],
    ("self_description of 20,000 characters", 2, "self_description", _persona_edit(2, _set("self_description", "x" * 20_000))),
    ("system_string of 50,000 characters", 10, "system_string", _persona_edit(10, _set("system_string", "y" * 50_000))),
    ("self_description is a number", 11, "self_description", _persona_edit(11, _set("self_description", 42))),
    ("a record of 3 MB", 5, None, _persona_edit(5, _set("notes", ["z" * 1000] * 3000))),
    ("lone surrogate", 2, None, lambda ls: [ls[0], _edited(ls[1], '"self_description": "', '"self_description": "\\ud800'),
                                            *ls[2:]]),
    ("deeply nested", 3, None, lambda ls: [*ls[:2], '{"persona_id": "p", "x": ' + "[" * 50_000 + "]" * 50_000 + "}", *ls[3:]]),
    ("empty file", None, None, lambda ls: []),
    ("only blank lines", None, None, lambda ls: ["", "   ", ""]),
]


def persona_cases(tmp: Path, config: Path) -> list[Case]:
    cases = []
    for i, (name, line, field, edit) in enumerate(PERSONA_CASES):
        path = tmp / f"personas-{i:03d}.jsonl"
        path.write_text("\n".join(edit(SAMPLE)) + "\n", encoding="utf-8")
        needles = [f"{path}:{line}" if line else str(path)] + ([field] if field else [])
        cases.append(Case("personas", name, ["--config", str(config), "--personas", str(path)], needles))
    # bytes that are not UTF-8, on a given line
    for k in (1, 7):
        path = tmp / f"personas-latin1-{k}.jsonl"
        lines = [s.encode() for s in SAMPLE]
        lines[k - 1] = lines[k - 1].replace(b"persona_id", b"persona_\xe9d", 1)
        path.write_bytes(b"\n".join(lines) + b"\n")
        cases.append(Case("personas", f"non-UTF-8 byte on line {k}", ["--config", str(config), "--personas", str(path)],
                          [f"{path}:{k}", "not UTF-8"]))
    return cases


# ---------------------------------------------------------------------------------- human data

# (column, value, text the message must hold)
HUMAN_VALUES: list[tuple[str, object, str]] = [
    *[("rating_preference", v, "rating_preference") for v in ("high", 150, -1, 100.5, "1e400")],
    *[("rating_engagingness", v, "rating_engagingness") for v in ("-0.5", "fifty")],
    *[("rating_provenance", v, "rating_provenance") for v in (101, "x")],
    *[("wtp_bid", v, "wtp_bid") for v in (-2, 1e9, "$5", 10.01)],
    *[("position", v, "position") for v in (0, -1, "first", 1.5)],
    *[("rank", v, "rank") for v in (0, 5, 1.5, "top")],
    *[("opening_choice", v, "opening_choice") for v in ("maybe", 2)],
    *[("provenance_guess", v, "provenance_guess") for v in ("perhaps",)],
    *[("arm", v, "arm") for v in ("",)],
    *[("source", v, "source") for v in ("Human", "not a name!")],
]


def human_cases(tmp: Path) -> list[Case]:
    frame = flat_judgements().assign(source="human")
    cases = []
    out = tmp / "fidelity.json"

    def case(name: str, path: Path, needles: list[str]) -> None:
        cases.append(Case("human", name, ["analyze", "--human", str(path), "--out", str(out), "--n-boot", "0"],
                          needles, main="fidelity"))

    for i, (col, value, text) in enumerate(HUMAN_VALUES):
        for fmt in ("csv", "jsonl"):
            pos = (3 * i + 1) % len(frame)
            bad = frame.copy()
            bad[col] = bad[col].astype(object)
            bad.iloc[pos, bad.columns.get_loc(col)] = value
            path = tmp / f"human-{i:03d}.{fmt}"
            bad.to_csv(path, index=False) if fmt == "csv" else bad.to_json(path, orient="records", lines=True)
            row = pos + 2 if fmt == "csv" else pos + 1
            case(f"{col} = {value!r} ({fmt})", path, [f"{path}:{row}", text])
    for col in ("participant_id", "arm", "conversation_id"):
        path = tmp / f"human-no-{col}.csv"
        frame.drop(columns=[col]).to_csv(path, index=False)
        case(f"column {col} missing", path, [str(path), col])
    path = tmp / "human-header-only.csv"
    frame.head(0).to_csv(path, index=False)
    case("header only", path, [str(path), "no rows"])
    path = tmp / "human-empty.csv"
    path.write_bytes(b"")
    case("empty file", path, [str(path)])
    path = tmp / "human-latin1.csv"
    text = frame.to_csv(index=False).splitlines()
    text[4] = text[4].replace(",", ",caf\udce9", 1)
    path.write_bytes("\n".join(text).encode("utf-8", "surrogateescape"))
    case("non-UTF-8 byte on row 5", path, [f"{path}:5", "not UTF-8"])
    path = tmp / "human-bad-line.jsonl"
    lines = frame.to_json(orient="records", lines=True).splitlines()
    path.write_text("\n".join([*lines[:6], lines[6][:30], *lines[7:]]))
    case("truncated JSONL line 7", path, [f"{path}:7", "malformed JSON"])
    path = tmp / "human-array-line.jsonl"
    path.write_text("\n".join([*lines[:2], "[1, 2]", *lines[3:]]))
    case("JSONL line 3 is an array", path, [f"{path}:3"])
    path = tmp / "human.xlsx"
    path.write_text("x")
    case("unknown file type", path, [str(path), "unknown file type"])
    case("no such file", tmp / "absent.csv", [str(tmp / "absent.csv")])
    empty_dir = tmp / "human-dir-without-judgements"
    empty_dir.mkdir()
    case("directory without judgements", empty_dir, [str(empty_dir), "no judgements"])
    return cases


# ---------------------------------------------------------------------------------- arguments


def argument_cases(tmp: Path, config: Path) -> list[Case]:
    a_file = tmp / "a-file"
    a_file.write_text("not a directory")
    out = tmp / "fidelity.json"
    human = tmp / "human-ok.csv"
    flat_judgements().to_csv(human, index=False)
    run = [
        (["--limit", "-1"], ["--limit"]), (["--limit", "x"], ["--limit"]), (["--concurrency", "0"], ["concurrency"]),
        (["--shard", "3/2"], ["--shard"]), (["--shard", "0/0"], ["--shard"]), (["--shard", "x"], ["--shard"]),
        (["--shard", "-1/2"], ["--shard"]), (["--domains", ""], ["--domains"]), (["--domains", "nope"], ["nope"]),
        (["--domains", "values,values"], ["domains"]), (["--seed", "-1"], ["seed"]), (["--seed", "x"], ["--seed"]),
        (["--resume", str(tmp / "no-run")], [str(tmp / "no-run")]), (["--out", str(a_file)], [str(a_file), "--out"]),
        (["--personas", str(tmp / "absent.jsonl")], [str(tmp / "absent.jsonl")]),
        (["--human", str(tmp / "absent-human")], [str(tmp / "absent-human")]), (["--frobnicate"], ["--frobnicate"]),
    ]
    cases = [Case("arguments", " ".join(args) or "''", ["--config", str(config), *args], needles) for args, needles in run]
    cases.append(Case("arguments", "--config absent", ["--config", str(tmp / "absent.toml")], [str(tmp / "absent.toml")]))
    fid = [
        (["analyze", "--human", str(human), "--out", str(out), "--n-boot", "-1"], ["--n-boot"]),
        (["analyze", "--human", str(human), "--out", str(tmp)], [str(tmp)]),
        (["analyze", "--human", str(human), "--out", str(out), "--run", str(tmp / "no-run")], [str(tmp / "no-run")]),
        (["analyze", "--human", str(human), "--out", str(out), "--topics", "bogus"], ["--topics"]),
        (["analyze", "--human", str(human)], ["--out"]),
        (["import", "prism", str(tmp / "absent.jsonl"), str(tmp / "prism-out")], [str(tmp / "absent.jsonl")]),
        (["import", "dialogue-eval", str(human), str(a_file)], [str(a_file)]),
    ]
    cases += [Case("arguments", "fidelity " + " ".join(a[:1] + a[-2:]), a, n, main="fidelity") for a, n in fid]
    rep = [
        (["--run", str(tmp / "no-run")], [str(tmp / "no-run")]),
        (["--run", str(tmp), "--n-boot", "-3"], ["--n-boot"]),
    ]
    cases += [Case("arguments", "report " + " ".join(a), a, n, main="report") for a, n in rep]
    return cases


# ----------------------------------------------------------------------------------------- run

MAINS = {"run": "simlab.run", "fidelity": "simlab.fidelity.__main__", "report": "simlab.report.__main__"}


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _call(case: Case, capsys) -> tuple[int, str]:
    from importlib import import_module

    main = import_module(MAINS[case.main]).main
    try:
        code = main(case.argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code if isinstance(exc.code, int) else 2
    return code, capsys.readouterr().err


def _problems(case: Case, code: int, err: str, changed: list[str]) -> list[str]:
    out = []
    if code != 2:
        out.append(f"exit {code}")
    if "Traceback" in err:
        out.append("traceback")
    out += [f"message lacks {n!r}" for n in case.needles if n not in err]
    if changed:
        out.append(f"changed {changed}")
    return out


@pytest.mark.parametrize("family", ["config", "personas", "human", "arguments"])
def test_generated_malformed_inputs_exit_2_naming_the_file_and_change_nothing(family, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIMLAB_FUZZ_SURELY_UNSET_KEY", raising=False)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    config = inputs / "ok.toml"
    config.write_text(_base_config(tmp_path))
    cases = {"config": lambda: config_cases(inputs), "personas": lambda: persona_cases(inputs, config),
             "human": lambda: human_cases(inputs), "arguments": lambda: argument_cases(inputs, config)}[family]()
    bad = []
    for case in cases:
        before = _snapshot(tmp_path)
        code, err = _call(case, capsys)
        after = _snapshot(tmp_path)
        changed = sorted(str(p.relative_to(tmp_path)) for p in set(before) | set(after) if before.get(p) != after.get(p))
        if problems := _problems(case, code, err, changed):
            bad.append(f"{case.name}: {'; '.join(problems)}\n    stderr: {err.strip()[:300]}")
    print(f"{family}: {len(cases)} tried, {len(cases) - len(bad)} clean")
    assert not bad, f"{len(bad)} of {len(cases)} {family} cases misbehaved:\n" + "\n".join(bad)


def test_the_fuzz_covers_at_least_a_hundred_inputs(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    config = inputs / "ok.toml"
    config.write_text(_base_config(tmp_path))
    n = sum(len(f()) for f in (lambda: config_cases(inputs), lambda: persona_cases(inputs, config),
                               lambda: human_cases(inputs), lambda: argument_cases(inputs, config)))
    assert n >= 100, n
