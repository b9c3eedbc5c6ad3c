"""A study defined and extended from a module outside the package (tests/extensions/experiment_ext.py),
against the stub server: no TOML file, no edit of simlab."""

from __future__ import annotations

import asyncio

from simlab import LLMClient, load_personas, load_run, run_experiment, simulate_session
from simlab.runner import run_dir_for
from simlab.store import run_meta
from tests.extensions import experiment_ext as ext


def test_a_study_defined_outside_runs_and_a_later_invocation_extends_it(stub, tmp_path) -> None:
    experiment = ext.study(stub.base_url, str(tmp_path / "summaries"))
    out = str(tmp_path / "runs")
    first = asyncio.run(run_experiment(experiment, ext.pilot(out)))
    assert first.run_dir == run_dir_for(experiment, out_dir=out)
    assert (first.sessions_planned, first.sessions_completed, first.sessions_failed) == (2, 2, 0)
    more = asyncio.run(run_experiment(experiment, ext.extension(out)))
    assert more.run_dir == first.run_dir and more.sessions_done_before == 2
    assert (more.sessions_planned, more.sessions_completed) == (2 * 3 * 2, 12)
    conv = load_run(more.run_dir).conversations
    assert sorted(conv.groupby("source").size().to_dict().items()) == [("sim_dynamic", 6),
                                                                      ("sim_dynamic_no_persona", 6)]
    assert sorted(set(conv["repeat"])) == [0, 1, 2]
    assert run_meta(more.run_dir)["experiment"] == experiment.public_dict()
    # another seed is another study: another run directory
    assert run_dir_for(ext.study(stub.base_url, str(tmp_path / "summaries"), seed=12), out_dir=out) != first.run_dir


def test_a_plan_of_ones_own_runs_session_by_session(stub, tmp_path) -> None:
    experiment = ext.study(stub.base_url, str(tmp_path / "summaries"))
    plan = ext.controls_only(experiment, load_personas("personas/sample.jsonl")[:2])
    assert [s.conversation_id for s in plan] == [f"{s.participant_id}:values:no_persona" for s in plan]

    async def run_all():
        client = LLMClient(experiment.endpoints)
        try:
            return [await simulate_session(spec, experiment, client) for spec in plan]
        finally:
            await client.aclose()

    records = asyncio.run(run_all())
    assert [r.conversation.conversation_id for r in records] == [s.conversation_id for s in plan]
    assert all(r.participant.source == "sim_dynamic_no_persona" and r.participant.rendering is None for r in records)
    assert [r.conversation.seed for r in records] == [s.seed for s in plan]
