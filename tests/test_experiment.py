"""The experiment (what defines a study) apart from the invocation (how one call runs it), the
sessions as ``SessionSpec``s, and runs written before the split: they open, resume and report."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from simlab.config import Config, Experiment, Invocation, default_config, experiment_hash, parse_config
from simlab.errors import ConfigError
from simlab.llm import LLMClient
from simlab.personas import load_personas
from simlab.plan import SessionSpec, plan_sessions
from simlab.protocol import derive_seed, simulate_session
from simlab.run import run_experiment
from simlab.runner import config_hash, run_dir_for
from simlab.store import STORE_FILE, STORE_SCHEMA_VERSION, load_run, read_table, run_meta
from simlab.store.meta import LEGACY_INVOCATION_KEYS
from tests.conftest import REPO, stub_config

PERSONAS = load_personas(REPO / "personas" / "sample.jsonl")


def _run(cfg: Experiment, invocation: Invocation | None = None, **kw: object):
    return asyncio.run(run_experiment(cfg, invocation, progress=False, report=False, **kw))  # type: ignore[arg-type]


# ---------------------------------------------------------------- the two models


def test_a_config_is_an_experiment_and_an_invocations_settings_and_every_field_is_documented() -> None:
    cfg = default_config()
    exp, inv = cfg.experiment, cfg.invocation(shard=(1, 2), progress=False)
    assert type(exp) is Experiment and isinstance(cfg, Experiment)
    assert set(Experiment.model_fields) | set(Invocation.model_fields) >= set(Config.model_fields)
    assert not set(Experiment.model_fields) & set(Invocation.model_fields)
    # stores of before split their config by these keys: each is an invocation setting today
    assert set(LEGACY_INVOCATION_KEYS) <= set(Invocation.model_fields) - set(Experiment.model_fields)
    assert (inv.concurrency, inv.limit, inv.shard, inv.progress) == (6, 12, (1, 2), False)
    assert Config.of(exp, inv) == cfg
    for model in (Experiment, Invocation, Config):
        undocumented = [name for name, f in model.model_fields.items() if not f.description]
        assert not undocumented, f"{model.__name__}: fields without a docstring: {undocumented}"


def test_the_experiment_hash_is_the_study_alone() -> None:
    cfg = default_config()
    settings = {"concurrency": 99, "limit": 1, "repeats": 3, "ablate_persona": True, "out_dir": "elsewhere",
                "max_gen_error_rate": 0.5}
    assert experiment_hash(cfg) == experiment_hash(cfg.model_copy(update=settings)) == experiment_hash(cfg.experiment)
    assert experiment_hash(cfg) != experiment_hash(cfg.model_copy(update={"seed": 1}))
    assert run_dir_for(cfg) == Path("runs") / f"quickstart-{experiment_hash(cfg)}"
    assert run_dir_for(cfg.experiment, (1, 4), out_dir="x") == Path("x") / f"quickstart-{experiment_hash(cfg)}-shard1of4"


def test_the_old_hash_is_the_one_older_simlab_named_run_directories_by() -> None:
    # computed by simlab before the experiment was split from the config (runner.config_hash then):
    # a changed value means runs made then are no longer found by the command that made them; the
    # quickstart config as it was then (3 personas × 2 domains, 6 in flight, longer replies)
    data = default_config().public_dict()
    data.update(limit=3, concurrency=6)
    data["protocol"]["domains"] = ["unguided", "emotional_wellbeing"]
    data["simulator"]["sampling"]["max_tokens"] = 60
    for arm in data["arms"]:
        arm["sampling"]["max_tokens"] = 48 if arm["id"] == "STYLE" else 64
    cfg = parse_config(data)
    assert config_hash(cfg, cfg.personas, (0, 1)) == "976337302f"
    assert config_hash(cfg, cfg.personas, (1, 4)) == "d073a07697"


def test_an_invocation_refuses_a_shard_outside_its_count() -> None:
    with pytest.raises(ValueError, match="need 0 <= i < n"):
        Invocation(shard=(4, 4))
    assert Invocation().shard == (0, 1)


# ---------------------------------------------------------------- sessions


def test_a_session_spec_owns_its_id_and_seed() -> None:
    p = PERSONAS[0]
    spec = SessionSpec(persona=p, domain="values", run_seed=5)
    assert (spec.conversation_id, spec.seed, spec.source) == (
        f"{p.persona_id}:values", derive_seed(5, p.persona_id, "values"), "sim_dynamic")
    again = SessionSpec(persona=p, domain="values", repeat=2, no_persona=True, run_seed=5)
    assert again.conversation_id == f"{p.persona_id}:values:r2:no_persona" and again.source == "sim_dynamic_no_persona"
    assert again.seed == derive_seed(5, p.persona_id, "values", "repeat", 2)
    judged = SessionSpec(persona=p, domain="values", run_seed=5, judged="h7")
    assert (judged.conversation_id, judged.seed, judged.source) == ("h7#sj", derive_seed(5, "sim_judgement", "h7"),
                                                                    "sim_judgement")
    plan = plan_sessions(default_config(), PERSONAS[:2], repeats=2, ablate_persona=True)
    per_persona = 2 * len(default_config().protocol.domains) * 2
    assert len(plan) == 2 * per_persona and len({s.conversation_id for s in plan}) == len(plan)
    assert [s.no_persona for s in plan[:per_persona]] == [False] * per_persona  # persona sessions first


def test_simulate_session_takes_a_spec_and_its_persona_domain_form_makes_the_same_session(stub, tmp_path) -> None:
    cfg = stub_config(stub, tmp_path, protocol={"min_turns": 1, "max_turns": 1})
    spec = SessionSpec(persona=PERSONAS[0], domain="values", repeat=1, run_seed=cfg.seed)

    async def both():
        client = LLMClient(cfg.endpoints)
        try:
            a = await simulate_session(spec, cfg, client)
            b = await simulate_session(PERSONAS[0], "values", cfg, client, repeat=1)
            with pytest.raises(ValueError, match="run seed 9"):
                await simulate_session(spec.model_copy(update={"run_seed": 9}), cfg, client)
            return a, b
        finally:
            await client.aclose()

    a, b = asyncio.run(both())
    assert a.conversation.conversation_id == b.conversation.conversation_id == spec.conversation_id
    assert a.conversation.seed == spec.seed and a.conversation.arm_letters == b.conversation.arm_letters
    # which model answered is kept with every call
    assert a.llm_calls and all(c.served_model == c.model for c in a.llm_calls)


# ---------------------------------------------------------------- runs


def test_a_later_invocation_adds_repeats_and_controls_to_the_same_run(stub, tmp_path) -> None:
    cfg = stub_config(stub, tmp_path, limit=1, protocol={"domains": ["values"], "min_turns": 1, "max_turns": 1})
    first = _run(cfg.experiment, cfg.invocation())
    more = cfg.invocation(repeats=2, ablate_persona=True, concurrency=2)
    second = _run(cfg.experiment, more)
    assert second.run_dir == first.run_dir
    assert (second.sessions_planned, second.sessions_done_before, second.sessions_completed) == (4, 1, 4)
    meta = run_meta(second.run_dir)
    assert meta["experiment"] == cfg.experiment.public_dict()
    assert meta["config"]["repeats"] == 2  # the latest call's config, for --resume and the report
    assert meta["resumes"][-1]["changed"] == ["ablate_persona: False != True", "concurrency: 6 != 2",
                                              "repeats: 1 != 2"]
    calls = read_table(second.run_dir, "llm_calls")
    assert calls["served_model"].notna().all()


def _as_written_before_the_split(run_dir: Path, cfg: Config) -> Path:
    """Rewrite a run as simlab wrote it before the experiment was stored on its own: the directory
    named by the old hash, no ``experiment`` in its meta (the config holds it), store schema 3
    (no ``served_model``)."""
    old = run_dir.parent / f"{cfg.name}-{config_hash(cfg, cfg.personas, (0, 1))}"
    shutil.move(run_dir, old)
    conn = sqlite3.connect(old / STORE_FILE, isolation_level=None)
    conn.execute("DELETE FROM meta WHERE key = 'experiment'")
    conn.execute("ALTER TABLE llm_calls DROP COLUMN served_model")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'store_schema'")
    conn.close()
    return old


def test_a_run_written_before_the_split_opens_resumes_and_reports(stub, tmp_path) -> None:
    cfg = stub_config(stub, tmp_path, limit=1, protocol={"domains": ["values"], "min_turns": 1, "max_turns": 1})
    made = _run(cfg)
    old = _as_written_before_the_split(made.run_dir, cfg)
    assert run_dir_for(cfg) == old  # the same command finds it under its old name
    assert len(load_run(old).conversations) == 1  # a reader opens it without changing it
    assert run_meta(old)["store_schema"] == 3

    # the same command with more participants resumes it: its stored config's experiment matches
    again = asyncio.run(run_experiment(cfg.model_copy(update={"limit": 2}), progress=False, report=True))
    assert again.run_dir == old and again.sessions_done_before == 1 and again.sessions_completed == 2
    assert again.report is not None and again.report.exists()
    meta = run_meta(old)
    assert meta["store_schema"] == STORE_SCHEMA_VERSION and meta["resumes"][-1]["changed"] == ["limit: 1 != 2"]
    served = read_table(old, "llm_calls").groupby("recorded_with")["served_model"].apply(lambda s: s.notna().all())
    assert served.to_dict() == {f"{PERSONAS[0].persona_id}:values": False, f"{PERSONAS[1].persona_id}:values": True}
    assert not list(old.parent.glob(f"{cfg.name}-{experiment_hash(cfg)}*"))  # no second run was made

    # a changed experiment is refused against the old meta too, naming the field
    other = cfg.model_copy(update={"seed": 3})
    from simlab.store import ConfigMismatchError

    with pytest.raises(ConfigMismatchError, match="seed: 0 != 3"):
        _run(other, run_dir=old)


def test_a_resume_of_an_old_run_by_its_directory_uses_its_stored_config(stub, tmp_path, capsys) -> None:
    from simlab.run import main

    cfg = stub_config(stub, tmp_path, limit=1, protocol={"domains": ["values"], "min_turns": 1, "max_turns": 1})
    old = _as_written_before_the_split(_run(cfg).run_dir, cfg)
    assert main(["--resume", str(old), "--limit", "2", "--quiet", "--no-report"]) == 0
    assert "(1 were already done)" in capsys.readouterr().out
    assert len(load_run(old).conversations) == 2


def test_a_bad_shard_option_is_a_config_error() -> None:
    from simlab.run import parse_shard

    with pytest.raises(ConfigError, match="need 0 <= i < n"):
        parse_shard("3/3")
    assert json.loads(json.dumps(Invocation(shard=parse_shard("1/3")).model_dump(mode="json")))["shard"] == [1, 3]
