"""Simulator variants in one run (``[[simulators]]``): the same sessions for every variant, each its
own source; adding a variant resumes the run, removing or changing one is refused; a variant's turn
model with an end marker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from simlab.config import Config, Experiment, Invocation, experiment_hash, parse_config
from simlab.errors import ConfigError
from simlab.run import run_experiment
from simlab.store import STORE_FILE, ConfigMismatchError, load_run, run_meta
from simlab.testing import StubServer
from tests.conftest import stub_config

ONE_TURN = {"domains": ["values"], "min_turns": 1, "max_turns": 1}


def _run(cfg: Experiment, invocation: Invocation | None = None, **kw: object):
    return asyncio.run(run_experiment(cfg, invocation, progress=False, report=False, **kw))  # type: ignore[arg-type]


def _variants(*ids: str, **extra: dict) -> list[dict]:
    return [{"id": i, "rendering": "none" if i == "none" else "profile", "sampling": {"max_tokens": 60},
             **extra.get(i, {})} for i in ids]


def variant_config(server: StubServer, tmp_path: Path, simulators: list[dict], **overrides: object) -> Config:
    """The stub's quickstart config with ``[[simulators]]`` instead of its ``[simulator]``."""
    data = stub_config(server, tmp_path, **overrides).public_dict()
    del data["simulator"]
    return parse_config({**data, "simulators": simulators})


def test_two_variants_meet_the_same_sessions_and_are_each_their_own_source(stub: StubServer, tmp_path: Path) -> None:
    cfg = variant_config(stub, tmp_path, _variants("a", "b"), limit=2, protocol=ONE_TURN)
    done = _run(cfg)
    assert (done.sessions_planned, done.sessions_completed) == (4, 4)
    run = load_run(done.run_dir)
    conv = run.conversations.set_index("conversation_id")
    assert sorted(conv["source"].unique()) == ["sim_dynamic:a", "sim_dynamic:b"]
    assert sorted(run.participants["source"]) == ["sim_dynamic:a", "sim_dynamic:a", "sim_dynamic:b", "sim_dynamic:b"]
    for pid in run.participants["participant_id"].unique():
        a, b = conv.loc[f"{pid}:values@a"], conv.loc[f"{pid}:values@b"]
        # paired by participant: the same seed, letters and display positions
        assert (a["seed"], a["arm_letters"], a["arm_positions"]) == (b["seed"], b["arm_letters"], b["arm_positions"])
    # each judgement row is tagged with its variant's source
    assert set(run.judgements["source"]) == {"sim_dynamic:a", "sim_dynamic:b"}
    # the variant's models are kept in the meta, by variant
    assert {"simulator:a", "simulator:b"} <= set(run_meta(done.run_dir)["models"])


def test_a_variant_run_lives_where_its_variants_do_not_matter_and_one_simulator_keeps_its_hash(stub, tmp_path) -> None:
    one = stub_config(stub, tmp_path)
    two = variant_config(stub, tmp_path, _variants("a"))
    three = variant_config(stub, tmp_path, _variants("a", "b"))
    assert experiment_hash(two) == experiment_hash(three) != experiment_hash(one)  # one's [simulator] is not the default


def test_adding_a_variant_runs_only_its_sessions_and_removing_or_changing_one_is_refused(stub, tmp_path) -> None:
    first = _run(variant_config(stub, tmp_path, _variants("a"), limit=2, protocol=ONE_TURN))
    before = stub.n_requests
    added = _run(variant_config(stub, tmp_path, _variants("a", "none"), limit=2, protocol=ONE_TURN))
    assert added.run_dir == first.run_dir
    assert (added.sessions_planned, added.sessions_done_before, added.sessions_completed) == (4, 2, 4)
    run = load_run(added.run_dir)
    # every request of the second call was one of the new variant's calls (the stub's JSON is valid: no retries)
    calls = run.llm_calls.dropna(subset=["conversation_id"])
    new_calls = calls[calls["conversation_id"].str.endswith("@none")]
    assert len(new_calls) == stub.n_requests - before > 0
    assert sorted(run.conversations["source"].value_counts().items()) == [("sim_dynamic:a", 2), ("sim_dynamic:none", 2)]
    assert run_meta(added.run_dir)["resumes"][-1]["added_variants"] == ["none"]

    store = Path(added.run_dir) / STORE_FILE
    digest = hashlib.sha256(store.read_bytes()).hexdigest()
    removed = variant_config(stub, tmp_path, _variants("none"), limit=2, protocol=ONE_TURN)
    with pytest.raises(ConfigMismatchError, match="variant 'a' is in the run but not in this config"):
        _run(removed, run_dir=added.run_dir)
    changed = variant_config(stub, tmp_path, _variants("a", "none", a={"memory": "none"}), limit=2,
                             protocol=ONE_TURN)
    with pytest.raises(ConfigMismatchError, match=r"simulators\[a\]\.memory: 'session' != 'none'"):
        _run(changed, run_dir=added.run_dir)
    assert hashlib.sha256(store.read_bytes()).hexdigest() == digest


def test_a_duplicate_variant_id_or_a_simulator_beside_variants_is_a_config_error(stub, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"simulators\[1\]\.id: variant id 'a' is used twice"):
        variant_config(stub, tmp_path, _variants("a", "a"))
    with pytest.raises(ConfigError, match=r"field 'simulators'.*either one \[simulator\]"):
        stub_config(stub, tmp_path, simulators=_variants("a"), simulator={"memory": "none"})
    with pytest.raises(ConfigError, match=r"simulators\[0\]\.id"):
        variant_config(stub, tmp_path, [{"id": "has space"}])
    with pytest.raises(ConfigError, match=r"simulators\[0\]\.turns\.endpoint: unknown endpoint 'gone'"):
        variant_config(stub, tmp_path, [{"id": "a", "turns": {"endpoint": "gone"}}])


END = "<|endconversation|>"


def test_the_turn_models_end_marker_ends_the_conversation_unseen_by_the_arms(tmp_path: Path) -> None:
    def script(body: dict) -> str | None:
        if body["model"] != "user-lm":
            return None  # the judgement model and the arms: generated replies
        asked = body["messages"][-1]["content"]
        # the opening carries a marker (cut out: the participant may not stop yet), the next message ends
        return f"Hello there {END}" if "next" not in asked.lower() else f"I have heard enough. {END}"

    with StubServer(script=script) as server:
        turns = {"model": "user-lm", "end_marker": END, "sampling": {"temperature": 0.7, "max_tokens": 40}}
        cfg = variant_config(server, tmp_path, [{"id": "split", "turns": turns}], limit=1,
                             protocol={"domains": ["values"], "min_turns": 1, "max_turns": 4})
        done = _run(cfg)
        assert done.sessions_completed == 1, done
        arm_bodies = [json.dumps(r.body) for r in server.requests
                      if r.body["model"] != "user-lm" and not r.body.get("response_format")]
    run = load_run(done.run_dir)
    conv = run.conversations.iloc[0]
    assert conv["stop_reason"] == "user_ended" and conv["n_turns"] == 1
    user_turns = run.turns[run.turns["role"] == "user"]["text"].tolist()
    assert user_turns == ["Hello there"]
    assert arm_bodies and not any("<|endconversation|>" in b or "heard enough" in b for b in arm_bodies)
    calls = run.llm_calls
    instruments = set(calls["instrument"].dropna())
    assert "stop" not in instruments  # the marker is the stop decision: no stop question
    by_model = calls[calls["role"] == "simulator"].groupby("model")["instrument"].apply(set).to_dict()
    assert by_model["user-lm"] == {"opening", "next_message"}
    assert "opening" not in by_model["smollm2-135m"] and "turn_rating" in by_model["smollm2-135m"]


def test_an_older_store_takes_a_variant_after_its_migration(tmp_path: Path) -> None:
    from simlab.records import ParticipantRecord
    from simlab.store import RunStore
    from tests.test_store import make_session

    RunStore.create(tmp_path / "old", {"config": {"name": "t"}}).close()
    path = tmp_path / "old" / STORE_FILE
    closed = "CHECK (source IN ('human', 'sim_dynamic', 'sim_judgement', 'sim_dynamic_no_persona'))"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA writable_schema=ON")  # the version-4 shape: a closed list of sources
    for table in ("participants", "conversations"):
        conn.execute("UPDATE sqlite_master SET sql = replace(sql, 'source TEXT NOT NULL', ?) WHERE name = ?",
                     (f"source TEXT NOT NULL {closed}", table))
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'store_schema'")
    conn.close()
    assert closed in sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE name = 'participants'").fetchone()[0]

    store = RunStore.open(tmp_path / "old")
    record = make_session("p1")
    variant = record.model_copy(update={
        "participant": record.participant.model_copy(update={"source": "sim_dynamic:a"}),
        "conversation": record.conversation.model_copy(update={"source": "sim_dynamic:a"})})
    assert isinstance(variant.participant, ParticipantRecord)
    store.write_session(variant)
    store.close()
    assert load_run(tmp_path / "old").conversations["source"].tolist() == ["sim_dynamic:a"]


def _readme_variants() -> list[dict]:
    """The ``[[simulators]]`` of the README's example, as a config holds them."""
    import re
    import tomllib

    from tests.conftest import REPO

    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
                if "[[simulators]]" in b]
    return tomllib.loads(block)["simulators"]


def test_the_readme_variants_run_on_the_stub_and_export_as_their_sources(stub: StubServer, tmp_path: Path) -> None:
    from simlab.store import export

    variants = _readme_variants()
    assert [v["id"] for v in variants] == ["profile", "userlm"] and variants[1]["turns"]["model"] == "userlm-8b"
    cfg = variant_config(stub, tmp_path, variants, limit=2, protocol={"domains": ["values"], "min_turns": 1,
                                                                       "max_turns": 2})
    done = _run(cfg)
    assert (done.sessions_planned, done.sessions_completed) == (4, 4)
    out = export(done.run_dir, tmp_path / "out", "csv")
    import pandas as pd

    conversations = pd.read_csv(out / "conversations.csv")
    assert sorted(conversations["source"].unique()) == ["sim_dynamic:profile", "sim_dynamic:userlm"]
    calls = load_run(done.run_dir).llm_calls
    turns_calls = calls[(calls["role"] == "simulator") & (calls["model"] == "userlm-8b")]
    assert set(turns_calls["instrument"]) <= {"opening", "next_message"} and len(turns_calls) >= 2


def _variants_toml_on(url: str, tmp_path: Path) -> Path:
    from simlab.config import CONFIGS_DIR
    from tests.conftest import REPO

    text = (CONFIGS_DIR / "variants.toml").read_text()
    text = text.replace('kind = "local"          # no base_url: simlab starts the embedded server for the run',
                        f'kind = "vllm"\nbase_url = "{url}"').replace("n_ctx = 4096\n", "")
    text = text.replace('personas = "personas/sample.jsonl"', f'personas = "{REPO / "personas" / "sample.jsonl"}"')
    path = tmp_path / "variants.toml"
    path.write_text(f'out_dir = "{tmp_path / "runs"}"\n' + text)
    return path


def test_the_shipped_variants_config_runs_and_its_report_shows_both_sources(stub: StubServer, tmp_path: Path) -> None:
    from simlab.config import load_config

    cfg = load_config(_variants_toml_on(stub.base_url, tmp_path))
    assert [v.rendering for v in cfg.simulators] == ["profile", "none"]
    done = asyncio.run(run_experiment(cfg, progress=False, report=True))
    assert done.sessions_completed == 4 and done.report is not None
    page = Path(done.report).read_text()
    assert "sim_dynamic:profile" in page and "sim_dynamic:none" in page


@pytest.mark.slow
def test_two_variants_on_the_real_tiny_model_complete_and_are_both_stored(tmp_path: Path) -> None:
    """configs/variants.toml as shipped: 2 personas × 1 domain, the embedded SmolLM2 server."""
    import subprocess
    import sys

    from simlab.config import CONFIGS_DIR
    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-m", "simlab.run", "--config", str(CONFIGS_DIR / "variants.toml"),
                          "--out", str(tmp_path / "runs"), "--quiet"], cwd=REPO, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode in (0, 1), out.stderr  # 1: a session of the 135M model failed, recorded with its reason
    (run_dir,) = (tmp_path / "runs").iterdir()
    run = load_run(run_dir)
    assert set(run.conversations["source"]) == {"sim_dynamic:profile", "sim_dynamic:none"}
    assert "sim_dynamic:profile" in (run_dir / "report.html").read_text()


def test_a_variants_prompt_folder_overrides_the_simulators_templates_and_only_its_own(stub: StubServer,
                                                                                     tmp_path: Path) -> None:
    folder = tmp_path / "terse"
    (folder / "simulator").mkdir(parents=True)
    (folder / "simulator" / "system.j2").write_text("TERSE PARTICIPANT. {{ domain_instruction }}\n")
    (folder / "simulator" / "opening.j2").write_text("Write your TERSE first message.\n")
    cfg = variant_config(stub, tmp_path, _variants("plain", "terse", terse={"prompts": str(folder)}),
                         limit=1, protocol=ONE_TURN)
    done = _run(cfg)
    assert done.sessions_completed == 2
    systems = [r.body["messages"][0]["content"] for r in stub.requests if r.body["messages"][0]["role"] == "system"]
    terse = [s for s in systems if s.startswith("TERSE PARTICIPANT.")]
    assert terse and all("About you" not in s for s in terse)
    assert any(s.lstrip().startswith("You are taking part in a study") for s in systems)  # the other variant's
    calls = load_run(done.run_dir).llm_calls
    opening = calls[calls["instrument"] == "opening"].set_index("conversation_id")["prompt_hash"]
    # the overridden template's hash is recorded with the call, so the two openings differ
    assert opening.filter(like="@terse").iloc[0] != opening.filter(like="@plain").iloc[0]
    with pytest.raises(ConfigError, match=r"simulators\[0\]\.prompts"):
        variant_config(stub, tmp_path, _variants("x", x={"prompts": str(tmp_path / "missing")}))
    # the variant's templates are part of its definition: changed under the same id, the resume is refused
    (folder / "simulator" / "opening.j2").write_text("Write your TERSER first message.\n")
    with pytest.raises(ConfigMismatchError, match=r"simulators\[terse\]\.prompts: .*simulator/opening\.j2"):
        _run(cfg)


def test_a_variant_run_resumes_from_its_stored_config(stub: StubServer, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    done = _run(variant_config(stub, tmp_path, _variants("a", "b"), limit=1, protocol=ONE_TURN))
    again = subprocess.run([sys.executable, "-m", "simlab.run", "--resume", str(done.run_dir), "--quiet",
                            "--no-report"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "(2 were already done)" in again.stdout


def test_shards_of_a_variant_run_merge_into_one_run_with_every_variant(stub: StubServer, tmp_path: Path) -> None:
    from simlab.store import merge

    cfg = variant_config(stub, tmp_path, _variants("a", "b"), limit=4, protocol=ONE_TURN)
    shards = [_run(cfg, shard=(i, 2)).run_dir for i in range(2)]
    merge(tmp_path / "merged", shards).close()
    run = load_run(tmp_path / "merged")
    assert run.conversations["source"].value_counts().to_dict() == {"sim_dynamic:a": 4, "sim_dynamic:b": 4}


async def test_sim_judgement_refuses_several_variants_before_anything_is_written(stub: StubServer,
                                                                                 tmp_path: Path) -> None:
    from simlab.fidelity import load_human
    from simlab.personas import load_personas
    from simlab.sim_judgement import run_sim_judgement
    from tests.conftest import REPO
    from tests.test_sim_judgement import human_tables

    human = load_human(human_tables().write(tmp_path / "human"))
    cfg = variant_config(stub, tmp_path, _variants("a", "b"))
    with pytest.raises(ConfigError, match=r"field 'simulators'.*Sim-Judgement runs one \[simulator\]"):
        await run_sim_judgement(cfg, human, load_personas(REPO / "personas" / "sample.jsonl"), tmp_path / "run")
    assert not stub.requests and not (tmp_path / "run").exists()
