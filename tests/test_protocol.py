"""The PRISM-X session protocol end to end against a real HTTP stub server."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from simlab.personas import load_personas
from simlab.protocol import blind, derive_seed, simulate_session
from simlab.run import run_experiment
from simlab.store import load_run, read_table
from simlab.testing import Fault, StubServer
from tests.conftest import REPO, stub_config

ARMS = ["GEN", "PROMPT", "SUMMARY", "STYLE"]
TWO_DOMAINS = ("unguided", "emotional_wellbeing")  # sessions per participant: one per domain


def run(cfg, **kw):
    return asyncio.run(run_experiment(cfg, progress=False, report=False, **kw))


def test_run_experiment_with_tune_gc_off_never_enters_the_gc_tuning(stub, tmp_path, monkeypatch):
    import simlab.runner

    def refuse():
        raise AssertionError("the collector was tuned although tune_gc=False")

    monkeypatch.setattr(simlab.runner, "gc_for_many_sessions", refuse)
    summary = run(stub_config(stub, tmp_path, limit=1, protocol={"domains": list(TWO_DOMAINS), "min_turns": 1,
                                                             "max_turns": 1}), tune_gc=False)
    assert summary.sessions_completed == 2 and summary.sessions_failed == 0


def test_three_personas_two_domains_exact_rows(stub, tmp_path):
    cfg = stub_config(stub, tmp_path, limit=3, protocol={"domains": list(TWO_DOMAINS), "min_turns": 2, "max_turns": 2})
    summary = run(cfg)
    assert (summary.sessions_completed, summary.sessions_failed) == (6, 0)
    t = load_run(summary.run_dir)
    assert len(t.participants) == 3
    assert len(t.conversations) == 6
    assert list(t.arms["arm"]) == [a.id for a in cfg.arms]  # config order, not alphabetical
    assert list(t.arms["description"]) == [a.description for a in cfg.arms]
    assert set(t.conversations["domain"]) == set(TWO_DOMAINS)
    # max_turns = min_turns = 2: two user turns, each answered by four arms
    assert (t.conversations["n_turns"] == 2).all()
    assert len(t.turns) == 6 * (2 + 2 * 4)
    assert len(t.judgements) == 6 * 4
    assert len(t.bdm) == 6
    # per session: opening, 2×4 replies, opening choice, 2 turn ratings, next message,
    # 2 rankings of 3 picks, ratings, bids = 21 calls
    assert len(t.llm_calls) == 6 * 21
    assert (t.llm_calls["status"] == "ok").all()
    # the client records every call itself; each names and hashes every template it used
    from simlab.prompts import template_hash

    calls = t.llm_calls
    arm_calls = calls[calls["role"] == "arm"]
    assert len(arm_calls) == 6 * 8 and arm_calls["instrument"].eq("reply").all()
    assert {(a, h) for a, h in zip(arm_calls["prompt_name"], arm_calls["prompt_hash"])} == {
        (arm.system_prompt, template_hash(arm.system_prompt)) for arm in cfg.arms}
    sim_calls = calls[calls["role"] == "simulator"]
    assert sim_calls["prompt_name"].str.endswith("+simulator/system.j2").all()
    assert sim_calls["prompt_hash"].str.fullmatch(r"[0-9a-f]+\+[0-9a-f]+").all()
    assert set(sim_calls["conversation_id"]) == set(t.conversations["conversation_id"])
    for _, conv in t.conversations.iterrows():
        letters = json.loads(conv["arm_letters"])
        assert sorted(letters) == sorted(ARMS)
        assert sorted(letters.values()) == ["A", "B", "C", "D"]
        j = t.judgements[t.judgements["conversation_id"] == conv["conversation_id"]]
        assert sorted(j["rank"]) == [1, 2, 3, 4]
        assert sorted(j["provenance_rank"]) == [1, 2, 3, 4]
        assert j["opening_choice"].sum() == 1 and j["provenance_guess"].sum() == 1
        assert all(letters[a] == letter for a, letter in zip(j["arm"], j["letter"]))
        assert all(p == "ABCD".index(letter) + 1 for p, letter in zip(j["position"], j["letter"]))
    assistant = t.turns[t.turns["role"] == "assistant"]
    assert assistant["turn_rating"].between(0, 100).all()
    assert t.judgements["wtp_bid"].between(0, 10).all()
    instruments = read_table(summary.run_dir, "instruments")
    assert set(instruments["instrument"]) >= {"opening", "opening_choice", "turn_rating", "next_message",
                                              "ranking_1", "provenance_ranking_3", "ratings", "wtp"}


def test_seeds_reproduce_letters_and_draws(tmp_path):
    def maps(seed: int, sub: str):
        with StubServer(seed=seed) as server:
            cfg = stub_config(server, tmp_path / sub, limit=2, seed=seed)
            t = load_run(run(cfg).run_dir)
        letters = dict(zip(t.conversations["conversation_id"], t.conversations["arm_letters"]))
        draws = t.bdm.sort_values("conversation_id")[["conversation_id", "arm", "price"]].values.tolist()
        return letters, draws

    a = maps(7, "a")
    b = maps(7, "b")
    c = maps(8, "c")
    assert a == b
    assert a[0] != c[0]
    assert blind(ARMS, derive_seed(7, "sample01", "unguided")) == json.loads(a[0]["sample01:unguided"])


def test_blinding_is_balanced_over_many_units():
    counts = {arm: [0] * 4 for arm in ARMS}
    for i in range(4000):
        for arm, letter in blind(ARMS, derive_seed(0, f"p{i}", "values")).items():
            counts[arm]["ABCD".index(letter)] += 1
    for arm in ARMS:  # each arm in each position ~1000 times (binomial sd ≈ 27)
        assert all(880 < n < 1120 for n in counts[arm]), counts


def test_arms_see_only_their_own_history_and_user_never_sees_arm_names(stub, tmp_path):
    cfg = stub_config(stub, tmp_path, limit=1, protocol={"domains": ["values"], "min_turns": 2, "max_turns": 2})
    run(cfg)
    sim_requests = [r.body for r in stub.requests if r.body["messages"][0]["content"].startswith("You are taking part")]
    arm_requests = [r.body for r in stub.requests if not r.body["messages"][0]["content"].startswith("You are taking part")]
    assert len(arm_requests) == 8 and len(sim_requests) == 13
    for body in sim_requests:
        text = json.dumps(body["messages"])
        for arm in ARMS:
            assert not re.search(rf"\b{arm}\b", text), f"arm name {arm} leaked to the simulated user"
    # second-turn arm requests: system, user, that arm's own reply, user
    second = [b for b in arm_requests if len(b["messages"]) == 4]
    assert len(second) == 4
    first_replies = {b["messages"][0]["content"]: b["messages"][2]["content"] for b in second}
    assert len(set(first_replies.values())) == 4  # each arm got back its own, distinct reply


def test_user_may_stop_after_minimum(tmp_path):
    def script(body):
        fmt = json.dumps(body.get("response_format") or {})
        if "StopDecision" in fmt:
            return json.dumps({"continue": False})
        if "TurnRating" in fmt:
            return json.dumps({"A": 50, "B": 60, "C": 70, "D": 80})
        return None

    with StubServer(script=script) as server:
        cfg = stub_config(server, tmp_path, limit=1, protocol={"domains": ["values"], "min_turns": 1, "max_turns": 4})
        t = load_run(run(cfg).run_dir)
    conv = t.conversations.iloc[0]
    assert conv["n_turns"] == 1 and conv["stop_reason"] == "user_ended"
    assert sorted(t.turns.loc[t.turns["role"] == "assistant", "turn_rating"]) == [50, 60, 70, 80]


def test_generation_failure_is_shown_and_flagged(stub, tmp_path):
    # the concise arm's first request fails twice (its endpoint allows 2 attempts)
    stub.add_fault(Fault(status=500, match="Keep every answer short"), Fault(status=500, match="Keep every answer short"))
    cfg = stub_config(stub, tmp_path, limit=1, protocol={"domains": ["values"]})
    t = load_run(run(cfg).run_dir)
    assert bool(t.conversations.iloc[0]["gen_error"]) is True
    failed = t.turns[t.turns["gen_error"].astype(bool)]
    assert list(failed["arm"]) == ["STYLE"] and list(failed["turn"]) == [0]
    assert "technical error" in failed.iloc[0]["text"]
    calls = t.llm_calls
    assert ((calls["arm"] == "STYLE") & (calls["status"] == "error")).sum() == 1


def test_context_budget_ends_conversation(stub, tmp_path):
    cfg = stub_config(stub, tmp_path, limit=1,
                      protocol={"domains": ["values"], "max_turns": 6, "context_budget_tokens": 300})
    t = load_run(run(cfg).run_dir)
    conv = t.conversations.iloc[0]
    assert conv["stop_reason"] == "context_limit" and bool(conv["max_turns_reached"])
    assert conv["n_turns"] == 1
    assert len(t.judgements) == 4  # the assessment still happens


def test_schema_failures_are_recorded_not_guessed(stub, tmp_path):
    stub.add_fault(*[Fault(kind="schema_violation", match="Which response do you prefer")] * 3)
    cfg = stub_config(stub, tmp_path, limit=1, protocol={"domains": ["values"]})
    summary = run(cfg)
    assert (summary.sessions_completed, summary.sessions_failed) == (0, 1)
    failures = read_table(summary.run_dir, "failures")
    assert len(failures) == 1
    row = failures.iloc[0]
    assert row["error_type"] == "StructuredOutputError"
    assert "preferred" in row["reason"] or "personalised" in row["reason"]
    # the reason says which question was asked, by instrument and template
    assert row["reason"].startswith("question 'opening_choice' (simulator/opening_choice.j2): "), row["reason"]
    assert '"unexpected": true' in row["raw_text"]
    t = load_run(summary.run_dir)
    assert len(t.judgements) == 0 and len(t.conversations) == 0
    # a resume does not redo a recorded failure unless asked to
    again = run(cfg)
    assert again.sessions_failed == 1 and again.sessions_completed == 0
    retried = run(cfg, retry_failed=True)
    assert retried.sessions_completed == 1 and retried.sessions_failed == 0


async def test_simulate_session_python_api(stub, tmp_path):
    from simlab.llm import LLMClient

    cfg = stub_config(stub, tmp_path)
    persona = load_personas(REPO / "personas" / "sample.jsonl")[0]
    client = LLMClient(cfg.endpoints)
    record = await simulate_session(persona, "controversy", cfg, client)
    assert record.conversation.domain == "controversy" and record.conversation.in_domain
    assert record.participant.source == "sim_dynamic"
    assert len(record.judgements) == 4


async def test_a_dead_endpoint_is_backend_unavailable_not_a_session_failure(tmp_path):
    import socket

    from simlab.errors import BackendUnavailable
    from simlab.llm import LLMClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Dead:
        base_url = f"http://127.0.0.1:{port}/v1"

    cfg = stub_config(Dead, tmp_path, endpoints={"local": {"kind": "vllm", "base_url": Dead.base_url,
                                                           "max_attempts": 2, "dead_after_s": 1}})
    persona = load_personas(REPO / "personas" / "sample.jsonl")[0]
    with pytest.raises(BackendUnavailable) as info:
        await simulate_session(persona, "values", cfg, LLMClient(cfg.endpoints))
    assert info.value.endpoint == "local" and "refused or dropped" in str(info.value)


def test_an_arm_whose_replies_are_mostly_error_notices_fails_the_run_and_says_why(stub, tmp_path):
    # every request of the concise arm fails (500 twice = its 2 attempts): the user sees notices
    stub.add_fault(*[Fault(status=500, match="Keep every answer short")] * 40)
    cfg = stub_config(stub, tmp_path, limit=2, protocol={"domains": ["values"], "min_turns": 2, "max_turns": 2})
    summary = run(cfg)
    assert summary.sessions_completed == 2 and summary.sessions_failed == 0
    errors, replies = summary.gen_errors_by_arm["STYLE"]
    assert errors == replies == 4 and summary.gen_errors_by_arm["GEN"] == (0, 4)
    alert = summary.gen_error_alert
    assert alert is not None and "STYLE 4/4 (100%)" in alert and "GEN" not in alert
    text = summary.text()
    assert "replies that are error notices per arm: GEN=0/4" in text and "FAILED: " in text
    lenient = summary.__class__(**{**summary.__dict__, "max_gen_error_rate": 1.0})
    assert lenient.gen_error_alert is None  # the threshold is the config's
    # the report's header shows the same per-arm shares and which arm is over the limit
    from simlab.report import write_run_report

    page = write_run_report(summary.run_dir, n_boot=0).read_text()
    assert "Replies that are error notices, per arm" in page
    assert "<td>STYLE</td><td class=\"num\">4</td><td class=\"num\">4</td><td class=\"num\">100.0% <strong>over the limit" in page
    assert "<td>GEN</td><td class=\"num\">0</td><td class=\"num\">4</td><td class=\"num\">0.0%</td>" in page


def test_a_dead_arm_endpoint_stops_the_run_instead_of_rating_error_notices(stub, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    cfg = stub_config(stub, tmp_path, limit=2)
    data = cfg.public_dict()
    data["endpoints"]["arms"] = {"kind": "vllm", "base_url": dead, "max_attempts": 2, "timeout_s": 5,
                                 "dead_after_s": 1}
    for arm in data["arms"]:
        arm["endpoint"] = "arms"
    from simlab.config import parse_config

    summary = run(parse_config(data))
    assert summary.stopped and "endpoint 'arms'" in summary.stopped
    assert (summary.sessions_completed, summary.sessions_failed) == (0, 0)  # nothing recorded: all still to do
    assert len(read_table(summary.run_dir, "failures")) == 0


def test_failed_sessions_are_grouped_by_cause_with_an_example_each(stub, tmp_path):
    # one session at a time: the first two fail at the opening choice, the third at the ratings
    stub.add_fault(*[Fault(kind="schema_violation", match="Which response do you prefer")] * 6)
    stub.add_fault(*[Fault(kind="schema_violation", match="The conversation is over. Rate each")] * 3)
    cfg = stub_config(stub, tmp_path, limit=3, concurrency=1, protocol={"domains": ["values"]})
    summary = run(cfg)
    assert summary.sessions_failed == 3
    groups = [(g.count, g.error_type) for g in summary.failure_groups]
    assert groups == [(2, "StructuredOutputError"), (1, "StructuredOutputError")]
    keys = {g.example for g in summary.failure_groups}
    assert len(keys) == 2 and all(k.endswith(":values") for k in keys)
    text = summary.text()
    assert "failed sessions by cause:" in text and "2 × StructuredOutputError" in text
    assert "--retry-failed" in text
    # the report's header shows the same table
    from simlab.report import write_run_report

    html = write_run_report(summary.run_dir, n_boot=20).read_text()
    assert "Failed sessions by cause" in html and "--retry-failed" in html
    assert all(k in html for k in keys)


def test_summary_rendering_records_the_artefact_and_reuses_it(stub, tmp_path):
    from simlab.store import run_meta

    cfg = stub_config(stub, tmp_path, limit=2, protocol={"domains": ["values"]},
                      simulator={"rendering": "summary"})
    summary = run(cfg)
    assert summary.sessions_completed == 2
    artefacts = run_meta(summary.run_dir)["persona_summaries"]
    assert set(artefacts) == {"sample01", "sample02"}
    assert all(a["model"] == "smollm2-135m" and len(a["input_hash"]) == 64 for a in artefacts.values())
    calls = load_run(summary.run_dir).llm_calls
    assert (calls["role"] == "summary").sum() == 2
    # a second run with another seed reuses the cached summaries: no new summary calls
    cfg2 = stub_config(stub, tmp_path, limit=2, seed=1, protocol={"domains": ["values"]},
                       simulator={"rendering": "summary"})
    calls2 = load_run(run(cfg2).run_dir).llm_calls
    assert (calls2["role"] == "summary").sum() == 0


def test_summaries_are_made_inside_the_sessions_concurrently(tmp_path):
    # made one at a time before the sessions, 2,000 summaries would leave a fleet idle for an hour
    with StubServer(delay=0.3) as server:
        cfg = stub_config(server, tmp_path, limit=3, concurrency=6, protocol={"domains": ["values"]},
                          simulator={"rendering": "summary"})
        summary = run(cfg)
        summary_requests = [r for r in server.requests if "helping researchers describe" in json.dumps(r.body)]
    assert summary.sessions_completed == 3
    t = load_run(summary.run_dir)
    made = t.llm_calls[t.llm_calls["role"] == "summary"]
    assert len(made) == 3 and made["conversation_id"].isna().all()  # recorded on their own, once each
    assert len(summary_requests) >= 3
    first = sorted(r.started for r in summary_requests)[:3]
    assert first[-1] - first[0] < 0.25  # all three asked at once, not 0.3 s apart


def test_a_failed_summary_fails_only_its_personas_sessions_with_the_reason(tmp_path):
    with StubServer() as server:
        # both attempts at sample02's summary (only its conversations mention Dijkstra) get a 500
        server.add_fault(*[Fault(status=500, match="Dijkstra") for _ in range(2)])
        cfg = stub_config(server, tmp_path, limit=3, simulator={"rendering": "summary"},
                          protocol={"domains": list(TWO_DOMAINS)})
        summary = run(cfg)
    assert (summary.sessions_completed, summary.sessions_failed) == (4, 2)
    failures = read_table(summary.run_dir, "failures")
    assert set(failures["participant_id"]) == {"sample02"}
    assert failures["reason"].str.startswith("persona summary: ").all()
    assert failures["reason"].str.contains("500").all()


def test_holdout_conversations_are_left_out_of_personas(tmp_path):
    from simlab.personas import load_persona_set

    sample = REPO / "personas" / "sample.jsonl"
    full = {p.persona_id: p for p in load_persona_set(sample)}
    target = full["sample01"].conversations[0].conversation_id
    held = tmp_path / "holdout.txt"
    held.write_text(f"# evaluation targets\n{target}\n")
    reduced = {p.persona_id: p for p in load_persona_set(sample, held)}
    assert target not in [c.conversation_id for c in reduced["sample01"].conversations]
    assert len(reduced["sample01"].conversations) == len(full["sample01"].conversations) - 1
    assert reduced["sample02"] == full["sample02"]


def test_shards_are_disjoint_and_merge_into_the_whole_run(stub, tmp_path):
    import subprocess
    import sys

    cfg = stub_config(stub, tmp_path, limit=4, protocol={"domains": ["values"]})
    dirs = [run(cfg, shard=(i, 2)).run_dir for i in range(2)]
    keys = [set(load_run(d).conversations["conversation_id"]) for d in dirs]
    assert len(keys[0]) == len(keys[1]) == 2 and not keys[0] & keys[1]
    out = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "simlab.store", "merge", str(out), *map(str, dirs)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    merged = load_run(out)
    assert set(merged.conversations["conversation_id"]) == keys[0] | keys[1]
    assert len(merged.judgements) == 16
    exported = subprocess.run([sys.executable, "-m", "simlab.store", "export", str(out), str(tmp_path / "csv")],
                              capture_output=True, text=True, cwd=REPO)
    assert exported.returncode == 0 and (tmp_path / "csv" / "judgements.csv").exists()


def test_replies_with_no_choices_fail_the_session_with_a_reason_not_the_run(stub, tmp_path):
    # the stub endpoint allows 2 attempts: the opening choice of the first session gets two empty replies
    stub.add_fault(*[Fault(kind="empty_choices", match="Which response do you prefer")] * 2)
    cfg = stub_config(stub, tmp_path, limit=2, concurrency=1, protocol={"domains": ["values"]})
    summary = run(cfg)
    assert (summary.sessions_completed, summary.sessions_failed) == (1, 1)
    failures = read_table(summary.run_dir, "failures")
    assert failures.iloc[0]["error_type"] == "LLMError" and "no choices" in failures.iloc[0]["reason"]
    assert failures.iloc[0]["reason"].startswith("question '"), failures.iloc[0]["reason"]


def test_an_empty_message_is_retried_as_often_as_the_endpoint_allows_then_fails_the_session(stub, tmp_path):
    import json as _json

    empty = _json.dumps({"id": "chatcmpl-empty", "object": "chat.completion", "created": 0, "model": "m",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "  "}}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}})
    # two empty openings: with schema_attempts = 2 the simulator gives up (a third attempt would have worked)
    stub.add_fault(*[Fault(kind="raw", body=empty, match="Write the first message you would send")] * 2)
    cfg = stub_config(stub, tmp_path, limit=1, concurrency=1, protocol={"domains": ["values"]})
    data = cfg.public_dict()
    data["endpoints"]["local"]["schema_attempts"] = 2
    from simlab.config import parse_config

    summary = run(parse_config(data))
    assert (summary.sessions_completed, summary.sessions_failed) == (0, 1)
    failures = read_table(summary.run_dir, "failures")
    assert "empty message" in failures.iloc[0]["reason"]
    asked = [r for r in stub.requests if "Write the first message you would send" in _json.dumps(r.body)]
    assert len(asked) == 2  # as many as the endpoint allows, not a fixed three


def test_a_replica_killed_mid_run_loses_no_session_and_streams_stay_on_one_replica(tmp_path):
    import threading
    import time

    # deterministic: every opening message differs (it is a digest of its request), so it names its stream
    servers = [StubServer(seed=i, deterministic=True).start() for i in range(3)]
    victim = servers[0]
    killed_at: list[float] = []

    def kill_after(n: int) -> None:  # the replica dies once it has seen n requests
        while len(victim.requests) < n:
            time.sleep(0.005)
        killed_at.append(time.time())
        victim.stop()

    watcher = threading.Thread(target=kill_after, args=(40,), daemon=True)
    watcher.start()
    try:
        cfg = stub_config(servers[0], tmp_path, limit=6, concurrency=12, protocol={"domains": list(TWO_DOMAINS)})
        data = cfg.public_dict()
        data["endpoints"]["local"].update(replica_urls=[s.base_url for s in servers[1:]], max_in_flight=4,
                                          max_attempts=5)
        from simlab.config import parse_config

        summary = run(parse_config(data))
    finally:
        for s in servers:
            s.stop()
    watcher.join(5)
    assert killed_at, "the replica was never killed"
    # every session is accounted for, once
    t = load_run(summary.run_dir)
    failures = read_table(summary.run_dir, "failures")
    keys = list(t.conversations["conversation_id"]) + list(failures["conversation_id"])
    assert len(keys) == len(set(keys)) == 12
    assert summary.sessions_completed == 12, failures["reason"].tolist()
    # the killed replica had work before it died; the others took the rest
    assert len(victim.requests) >= 40 and all(len(s.requests) > 0 for s in servers[1:])
    assert max(s.max_in_flight for s in servers) <= 4  # the bound holds per replica, all arms together

    # a stream: the simulator of one conversation (its system prompt names persona and domain), or
    # one arm's thread of one conversation (its model, system prompt and the opening message)
    def stream(body: dict) -> tuple:
        msgs = body["messages"]
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
        if system.startswith("You are taking part in a study"):
            return ("sim", system)
        first_user = next((m["content"] for m in msgs if m["role"] == "user"), "")
        return ("arm", body["model"], system, first_user)

    where: dict[tuple, list[tuple[float, int]]] = {}
    for i, s in enumerate(servers):
        for r in s.requests:
            where.setdefault(stream(r.body), []).append((r.started, i))
    moved = 0
    for key, seen in where.items():
        order = [i for _, i in sorted(seen)]
        survivors = [i for i in order if i != 0]
        # a stream stays on one replica; one that began on the killed replica moves once, after it died
        assert len(set(survivors)) <= 1, (key[:2], order)
        if 0 in order and survivors:
            assert order.index(survivors[0]) > max(k for k, i in enumerate(order) if i == 0), order
            moved += 1
    assert moved > 0  # some streams did live through the kill


def test_a_rerun_with_nothing_new_keeps_the_report_and_new_sessions_rewrite_it(stub, tmp_path):
    cfg = stub_config(stub, tmp_path, limit=2, protocol={"domains": ["values"]})
    first = asyncio.run(run_experiment(cfg, progress=False, report=True))
    assert first.report is not None and first.report.exists()
    written = first.report.stat().st_mtime_ns
    again = asyncio.run(run_experiment(cfg, progress=False, report=True))
    assert again.report == first.report and again.report.stat().st_mtime_ns == written  # kept
    # one more participant (limit may change on resume): the report is written again
    more = stub_config(stub, tmp_path, limit=3, protocol={"domains": ["values"]})
    third = asyncio.run(run_experiment(more, progress=False, report=True))
    assert third.run_dir == first.run_dir and third.sessions_completed == 3
    assert third.report == first.report and third.report.stat().st_mtime_ns != written


# ---------------------------------------------------------------- memory, stop question, bids, letters


def _sim_requests(stub):
    return [r.body for r in stub.requests if r.body["messages"][0]["content"].startswith("You are taking part")]


def _task(body) -> str:
    return body["messages"][-1]["content"]


def _schema_name(body) -> str:
    fmt = body.get("response_format") or {}
    return (fmt.get("json_schema") or {}).get("name") or json.dumps(fmt)


def test_memory_shows_the_participants_own_earlier_answers_and_never_an_arm_name(stub, tmp_path):
    cfg = stub_config(stub, tmp_path, limit=1, protocol={"domains": ["values"], "min_turns": 2, "max_turns": 3})
    t = load_run(run(cfg).run_dir)
    requests = _sim_requests(stub)
    j = t.judgements
    opening = j.loc[j["opening_choice"].astype(bool), "letter"].iloc[0]
    guess = j.loc[j["provenance_guess"].astype(bool), "letter"].iloc[0]
    assistant = t.turns[(t.turns["role"] == "assistant") & (t.turns["turn"] == 0)]
    first_ratings = dict(zip(assistant["letter"], assistant["turn_rating"]))
    wtp = next(b for b in requests if "willing to pay" in _task(b))
    text = _task(wtp)
    # after the transcript (system prompt + transcript stay a cacheable prefix), before the question
    assert text.index("Response D:") < text.index("Your own earlier answers in this conversation:") < text.index(
        "Imagine each assistant")
    assert f"you preferred {opening} and thought {guess} was the one personalised to you" in text
    rated = ", ".join(f"{x} {first_ratings[x]:g}" for x in "ABCD")
    assert f"Your ratings of the responses to your message 1: {rated}." in text
    ranking = "".join(j.sort_values("rank")["letter"])
    assert f"Your overall ranking, best first: {', '.join(ranking)}." in text
    assert "Your final ratings: preference" in text
    # the first questions have nothing to recall; the system prompt never changes
    assert "earlier answers" not in _task(requests[0]) and "earlier answers" not in _task(requests[1])
    assert len({b["messages"][0]["content"] for b in requests}) == 1
    for body in requests:
        for arm in ARMS:
            assert not re.search(rf"\b{arm}\b", json.dumps(body["messages"])), f"arm name {arm} reached the simulator"


def test_memory_none_asks_every_question_on_its_own(stub, tmp_path):
    cfg = stub_config(stub, tmp_path, limit=1, protocol={"domains": ["values"]}, simulator={"memory": "none"})
    run(cfg)
    assert not any("earlier answers" in _task(b) for b in _sim_requests(stub))


def test_stop_is_its_own_question_after_the_rating(tmp_path):
    order: list[str] = []

    def script(body):
        name = _schema_name(body)
        order.append(name)
        if name == "StopDecision":
            return json.dumps({"continue": order.count("StopDecision") < 2})  # continue once, then stop
        return None

    with StubServer(script=script) as server:
        cfg = stub_config(server, tmp_path, limit=1, protocol={"domains": ["values"], "min_turns": 2, "max_turns": 6})
        t = load_run(run(cfg).run_dir)
    conv = t.conversations.iloc[0]
    assert conv["n_turns"] == 3 and conv["stop_reason"] == "user_ended"
    asked = [n for n in order if n in ("TurnRating", "StopDecision")]
    # no stop question before min_turns; each stop question right after that turn's rating
    assert asked == ["TurnRating", "TurnRating", "StopDecision", "TurnRating", "StopDecision"]
    instruments = read_table(t_dir := next(iter((tmp_path / "runs").iterdir())), "instruments")
    assert (instruments["instrument"] == "stop").sum() == 2, t_dir
    from simlab.run import calls_per_session

    assert len(t.llm_calls) == calls_per_session(4, 3, cfg.protocol)  # the dry run's plan counts them right


def test_bids_are_dollars_and_cents_within_wtp_max(stub, tmp_path):
    cfg = stub_config(stub, tmp_path, limit=2, protocol={"domains": ["values"], "wtp_max": 7.5})
    t = load_run(run(cfg).run_dir)
    wtp = next(b for b in _sim_requests(stub) if "willing to pay" in _task(b))
    schema = wtp["response_format"]["json_schema"]["schema"]
    # a string of dollars and cents whose pattern holds the scale's maximum (grammars enforce it)
    assert {p["type"] for p in schema["properties"].values()} == {"string"}
    (pattern,) = {p["pattern"] for p in schema["properties"].values()}
    fits = [c for c in range(0, 1001) if re.fullmatch(pattern, f"{c / 100:.2f}")]
    assert fits == list(range(0, 751))
    assert not re.fullmatch(pattern, "7.5") and not re.fullmatch(pattern, "$7.50")
    assert "from 0.00 to 7.50" in _task(wtp)
    bids = t.judgements["wtp_bid"]
    assert bids.between(0, 7.5).all() and (bids != bids.round()).any()  # cents, not whole dollars
    assert (bids == bids.round(2)).all()


def test_a_bid_above_the_scale_is_retried_then_recorded_as_the_sessions_failure(tmp_path):
    def script(body):
        return json.dumps({x: "12.00" for x in "ABCD"}) if _schema_name(body) == "Bids" else None

    with StubServer(script=script) as server:
        cfg = stub_config(server, tmp_path, limit=1, protocol={"domains": ["values"]})
        summary = run(cfg)
    assert (summary.sessions_completed, summary.sessions_failed) == (0, 1)
    failure = read_table(summary.run_dir, "failures").iloc[0]
    assert failure["reason"].startswith("question 'wtp' (simulator/wtp.j2)") and "pattern" in failure["reason"]
    assert "12.00" in failure["raw_text"]


def test_independent_letters_are_shown_in_display_order_and_recorded(stub, tmp_path):
    # one conversation: every simulator request belongs to it
    cfg = stub_config(stub, tmp_path / "one", limit=1, protocol={"domains": ["values"], "letters": "independent"})
    t = load_run(run(cfg).run_dir)
    conv = t.conversations.iloc[0]
    positions, letters = json.loads(conv["arm_positions"]), json.loads(conv["arm_letters"])
    assert dict(zip(t.judgements["arm"], t.judgements["position"])) == positions
    # the display order is blind()'s, so runs without the option show the arms in the same order
    assert {a: "ABCD"[p - 1] for a, p in positions.items()} == blind(ARMS, derive_seed(0, "sample01", "values"))
    shown = [letters[a] for a in sorted(positions, key=positions.get)]
    assert shown != sorted(shown)  # this seed's letters are not in display order
    for body in _sim_requests(stub)[1:]:  # every question after the opening shows the replies in display order
        assert re.findall(r"Response ([A-D]):", _task(body))[:4] == shown
    turn = next(b for b in _sim_requests(stub) if _schema_name(b) == "TurnRating")
    assert list(turn["response_format"]["json_schema"]["schema"]["properties"]) == shown
    # over many conversations letters and positions vary independently
    cfg = stub_config(stub, tmp_path / "many", limit=3, protocol={"letters": "independent"})
    j = load_run(run(cfg).run_dir).judgements
    assert (j["position"] != j["letter"].map("ABCD".index) + 1).mean() > 0.4


def test_repeats_and_the_no_persona_control(stub, tmp_path):
    cfg = stub_config(stub, tmp_path, limit=2, protocol={"domains": ["values"]}, repeats=2, ablate_persona=True)
    summary = run(cfg)
    assert (summary.sessions_planned, summary.sessions_completed, summary.sessions_failed) == (8, 8, 0)
    t = load_run(summary.run_dir)
    c = t.conversations.set_index("conversation_id")
    assert sorted(c.index) == sorted(f"{p}:values{r}{a}" for p in ("sample01", "sample02") for r in ("", ":r1")
                                     for a in ("", ":no_persona"))
    assert sorted(c.groupby(["source", "repeat"]).size().items()) == [
        (("sim_dynamic", 0), 2), (("sim_dynamic", 1), 2), (("sim_dynamic_no_persona", 0), 2),
        (("sim_dynamic_no_persona", 1), 2)]
    # the control shares its persona session's seed and letters; a repeat draws its own
    assert c.loc["sample01:values:no_persona", "seed"] == c.loc["sample01:values", "seed"]
    assert c.loc["sample01:values:no_persona", "arm_letters"] == c.loc["sample01:values", "arm_letters"]
    assert c.loc["sample01:values:r1", "seed"] != c.loc["sample01:values", "seed"]
    # the control's simulator has no persona; the arms still know the participant
    systems = {b["messages"][0]["content"] for b in _sim_requests(stub)}
    assert sum("About you:" in s for s in systems) == 2 and len(systems) == 3
    assert set(t.participants["source"]) == {"sim_dynamic", "sim_dynamic_no_persona"}
    # raising repeats on the finished run adds only the new sessions
    more = run(cfg.model_copy(update={"repeats": 3}))
    assert (more.run_dir, more.sessions_planned, more.sessions_done_before, more.sessions_completed) == (
        summary.run_dir, 12, 8, 12)
