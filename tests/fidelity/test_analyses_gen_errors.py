"""Generation errors table: counts per source × arm, flags the data lack said, real data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from simlab.fidelity.analyses import gen_errors
from simlab.fidelity.synthetic import make_synthetic
from simlab.tables import Tables

CONFIG_ORDER = ["PPFT", "GEN", "DPFT", "PROMPT"]  # not alphabetical: the table must keep it


def flagged() -> Tables:
    """12 participants × 4 domains per source; the simulator's flags planted at known places, the
    human rows without any flag (as human data usually are)."""
    t = make_synthetic(12, seed=0, autograde=False)
    c = t.conversations.astype({"gen_error": "boolean", "max_turns_reached": "boolean", "stop_reason": object})
    human = c["source"] == "human"
    c.loc[human, ["gen_error", "max_turns_reached"]] = pd.NA
    c.loc[human, "stop_reason"] = None
    sim_ids = list(c.loc[~human, "conversation_id"])
    c.loc[c["conversation_id"].isin(sim_ids[:3]), "gen_error"] = True  # 3 of 48 conversations
    c.loc[c["conversation_id"].isin(sim_ids[3:5]), ["max_turns_reached", "stop_reason"]] = [True, "context_limit"]
    turns = t.turns.assign(gen_error=pd.array([pd.NA] * len(t.turns), dtype="boolean"))
    sim_reply = (turns["role"] == "assistant") & turns["conversation_id"].isin(sim_ids)
    turns.loc[sim_reply, "gen_error"] = False
    # GEN fails in conversations 0 and 1 (turn 0 in both, turn 1 in conversation 0), PPFT in conversation 2
    for cid, arm, turn in ((sim_ids[0], "GEN", 0), (sim_ids[0], "GEN", 1), (sim_ids[1], "GEN", 0), (sim_ids[2], "PPFT", 0)):
        turns.loc[sim_reply & (turns["conversation_id"] == cid) & (turns["arm"] == arm) & (turns["turn"] == turn),
                  "gen_error"] = True
    arms = pd.DataFrame({"arm": CONFIG_ORDER, "config_order": range(4)})
    return replace(t, conversations=c, turns=turns, arms=arms)


def test_counts_and_shares_per_source_and_arm() -> None:
    t = flagged()
    r = gen_errors(t)
    assert r.status == "ok" and r.arms == CONFIG_ORDER
    sim = r.per_source["sim_dynamic"]
    assert list(sim.per_arm) == CONFIG_ORDER and sim.missing == []
    n_replies = int(((t.turns["role"] == "assistant") & t.turns["conversation_id"].str.startswith("sim_dynamic")).sum())
    assert sim.n_conversations == 48 and sim.n_replies == n_replies
    assert sim.n_reply_gen_error == 4 and sim.reply_gen_error_share == pytest.approx(4 / n_replies)
    assert sim.n_conversation_gen_error == 3 and sim.conversation_gen_error_share == pytest.approx(3 / 48)
    assert sim.n_max_turns_reached == 2 and sim.max_turns_reached_share == pytest.approx(2 / 48)
    stops = t.conversations.loc[t.conversations["source"] == "sim_dynamic", "stop_reason"].value_counts()
    assert sim.stop_reasons == {k: int(v) for k, v in sorted(stops.items())} and sim.stop_reasons["context_limit"] == 2
    assert sim.n_stop_reason_missing == 0
    gen, ppft, dpft = sim.per_arm["GEN"], sim.per_arm["PPFT"], sim.per_arm["DPFT"]
    assert gen.n_reply_gen_error == 3 and gen.n_conversation_arm_error == 2
    assert gen.arm_error_conversation_share == pytest.approx(2 / 48)
    assert gen.reply_gen_error_share == pytest.approx(3 / gen.n_replies)
    assert ppft.n_reply_gen_error == 1 and ppft.n_conversation_arm_error == 1
    assert dpft.n_reply_gen_error == 0 and dpft.reply_gen_error_share == 0.0
    assert sum(a.n_replies for a in sim.per_arm.values()) == sim.n_replies
    # every arm took part in every conversation: the conversation flags per arm are the source's
    assert all(a.n_conversations == 48 and a.n_conversation_gen_error == 3 for a in sim.per_arm.values())


def test_flags_the_data_do_not_record_are_missing_not_zero() -> None:
    hum = gen_errors(flagged()).per_source["human"]
    assert hum.missing == ["conversations.gen_error", "conversations.max_turns_reached", "conversations.stop_reason",
                           "turns.gen_error"]
    assert hum.n_conversations == 48 and hum.n_replies and hum.n_replies > 0
    for cell in (hum, *hum.per_arm.values()):
        assert cell.n_reply_gen_error is None and cell.reply_gen_error_share is None
        assert cell.n_conversation_gen_error is None and cell.conversation_gen_error_share is None
        assert cell.n_max_turns_reached is None and cell.max_turns_reached_share is None
    assert hum.stop_reasons == {}


def test_absent_columns_and_tables_do_not_crash() -> None:
    t = flagged()
    bare = replace(t, conversations=t.conversations.drop(columns=["gen_error", "max_turns_reached", "stop_reason"]),
                   turns=t.turns.drop(columns="gen_error"))
    r = gen_errors(bare)
    for src in r.per_source.values():
        assert src.missing == ["conversations.gen_error", "conversations.max_turns_reached",
                               "conversations.stop_reason", "turns.gen_error"]
        assert src.n_replies and src.n_reply_gen_error is None
    only_judgements = gen_errors(Tables(judgements=t.judgements))
    sim = only_judgements.per_source["sim_dynamic"]
    assert sim.n_conversations == 48 and sim.n_replies is None and "turns (assistant replies)" in sim.missing
    assert list(sim.per_arm) == sorted(CONFIG_ORDER)  # no arms table: alphabetical
    assert sim.per_arm["GEN"].n_conversations == 48


def test_flags_stored_as_text_read_the_same() -> None:
    t = flagged()
    as_text = replace(t, conversations=t.conversations.assign(
        gen_error=t.conversations["gen_error"].map({True: "True", False: "False"}).astype(object),
        max_turns_reached=t.conversations["max_turns_reached"].map({True: "1", False: "0"}).astype(object)),
        turns=t.turns.assign(gen_error=t.turns["gen_error"].map({True: "true", False: "false"}).astype(object)))
    assert gen_errors(as_text) == gen_errors(t)


def test_real_human_data_dialogue_eval(dialogue_eval_tables: Tables) -> None:
    t = dialogue_eval_tables
    r = gen_errors(t)
    assert r.status == "ok" and list(r.per_source) == ["human"]
    hum = r.per_source["human"]
    # Dialogue-Eval flags a conversation whose answer carries an error message; the rest it does not record
    assert hum.missing == ["conversations.max_turns_reached", "conversations.stop_reason", "turns.gen_error"]
    flag = t.conversations["gen_error"].astype("boolean")
    assert hum.n_conversations == len(t.conversations)
    assert hum.n_conversation_gen_error == int(flag.sum()) > 0
    assert hum.conversation_gen_error_share == pytest.approx(float(flag.mean()))
    replies = t.turns[t.turns["role"] == "assistant"]
    assert hum.n_replies == len(replies) and hum.n_reply_gen_error is None and hum.max_turns_reached_share is None
    assert r.arms == sorted(replies["arm"].dropna().unique()) == list(hum.per_arm)
    assert sum(a.n_replies or 0 for a in hum.per_arm.values()) == hum.n_replies
    assert all(0 < a.n_conversations <= hum.n_conversations for a in hum.per_arm.values())
    assert np.isfinite(hum.per_arm[r.arms[0]].conversation_gen_error_share)
