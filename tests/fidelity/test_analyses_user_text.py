"""The text of user turns: the measures against their definitions, planted effects recovered, the
null, the not-available paths, and the real Dialogue-Eval user turns split into two sources."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest

from simlab.fidelity.analyses import analyze_all
from simlab.fidelity.analyses.user_text import MEASURES, _pairs, distinct_pairs, mattr, tokens, user_text, words
from simlab.fidelity.calibration.user_text import SIM, simulate
from simlab.fidelity.result import FidelityResult
from simlab.tables import Tables


def test_tokenizer_words_and_punctuation() -> None:
    assert words("I'd like 2 know: why?") == ["i'd", "like", "2", "know", "why"]
    assert tokens("I'd like 2 know: why?") == ["i'd", "like", "2", "know", ":", "why", "?"]
    assert words("") == [] and tokens("  ") == []


def test_mattr_is_the_mean_ttr_of_every_window() -> None:
    rng = np.random.default_rng(0)
    for n in (51, 80, 137):
        ws = [f"w{i}" for i in rng.integers(0, 30, n)]
        brute = np.mean([len(set(ws[i:i + 50])) / 50 for i in range(n - 49)])
        assert mattr(ws, 50) == pytest.approx(brute, rel=1e-12)
    assert mattr(["a", "b", "a"], 50) == pytest.approx(2 / 3)  # shorter than the window: its type-token ratio
    assert math.isnan(mattr([], 50))


def test_distinct_pairs_is_the_weighted_average_over_pairs_of_participants() -> None:
    rng = np.random.default_rng(1)
    openings = [[f"w{i}" for i in rng.integers(0, 12, rng.integers(1, 8))] for _ in range(30)]
    part = rng.integers(0, 9, 30)
    w = rng.integers(0, 4, 9).astype(float)
    for n in (1, 2):
        types = {p: set() for p in range(9)}
        grams = np.zeros(9)
        for ws, p in zip(openings, part):
            g = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
            types[p] |= set(g)
            grams[p] += len(g)
        num = sum(w[a] * w[b] * len(types[a] | types[b]) for a, b in itertools.permutations(range(9), 2))
        den = sum(w[a] * w[b] * (grams[a] + grams[b]) for a, b in itertools.permutations(range(9), 2))
        got = distinct_pairs(_pairs(openings, part, 9, n), np.vstack([w, np.ones(9)]))
        assert got[0] == pytest.approx(num / den, rel=1e-12)


def _diff(r, key: str):
    return r.vs_human[SIM].measures[key].difference


def test_planted_length_difference_is_recovered() -> None:
    # simulated messages 1.3× as long: 13 words on average against 10 (exact by construction)
    r = user_text(simulate(11, True, "length"), n_boot=200, seed=11)
    assert r.status == "ok"
    for key in ("opening.words", "later.words", "ending.last_words"):
        d = _diff(r, key)
        assert d.ci_low <= 3.0 <= d.ci_high and d.ci_low > 0 and d.p_value < 0.05, (key, d)
    assert _diff(r, "opening.tokens").value > 0  # tokens follow words


def test_planted_diversity_difference_is_recovered() -> None:
    r = user_text(simulate(5, True, "diversity", n=200), n_boot=200, seed=5)
    for key in ("opening.distinct_1", "opening.mattr", "later.mattr"):
        d = _diff(r, key)
        assert d.ci_high < 0 and d.p_value < 0.05, (key, d)
    assert abs(_diff(r, "opening.words").value) < 1.0  # the lengths were not touched


def test_null_same_generator_for_both_sources() -> None:
    r = user_text(simulate(3, False, "length"), n_boot=200, seed=3)
    assert set(r.vs_human[SIM].measures) == set(MEASURES)
    for key, m in r.vs_human[SIM].measures.items():
        d = m.difference
        assert d is not None and d.ci_low <= 0 <= d.ci_high and d.p_value >= 0.05, (key, d)
        assert m.source is not None and m.human is not None and d.n == 80
    shares = r.per_source["human"].stop_reasons
    assert set(shares) == {"max_turns", "user_ended"}
    assert shares["max_turns"].value + shares["user_ended"].value == pytest.approx(1.0)
    assert set(r.vs_human[SIM].stop_reasons) == {"max_turns", "user_ended"}


def test_the_point_is_the_statistic_at_unit_weights_and_survives_json() -> None:
    t = simulate(4, False, "question")
    r = user_text(t, n_boot=50, seed=0)
    # by hand: share of openings with a question mark, per source
    turns = t.turns.merge(t.conversations[["conversation_id", "source"]], on="conversation_id")
    opening = turns[turns["turn"] == 0]
    share = opening.groupby("source")["text"].apply(lambda s: s.str.contains("?", regex=False).mean())
    m = r.vs_human[SIM].measures["opening.question"]
    assert m.source.value == pytest.approx(share[SIM]) and m.human.value == pytest.approx(share["human"])
    back = FidelityResult.model_validate_json(
        FidelityResult(sources=t.sources, n_boot=50, seed=0, analyses={"user_text": r}).model_dump_json())
    assert back.analyses["user_text"] == r


def _without_text(t: Tables, source: str) -> Tables:
    sim_convs = set(t.conversations.loc[t.conversations["source"] == source, "conversation_id"])
    return Tables(judgements=t.judgements, conversations=t.conversations,
                  turns=t.turns[~t.turns["conversation_id"].isin(sim_convs)])


def test_not_available_paths_say_why() -> None:
    t = simulate(2, False, "length")
    r = user_text(Tables(judgements=t.judgements), n_boot=10)
    assert r.status == "not_available" and r.reason == "no conversations table"
    # no turns table: every source says so, and how conversations end is still compared
    r = user_text(Tables(judgements=t.judgements, conversations=t.conversations), n_boot=10)
    assert r.per_source["human"].reason == "no turns table with user messages"
    assert r.vs_human[SIM].measures["opening.words"].reason == "no such user messages in sim_dynamic and human"
    assert r.vs_human[SIM].measures["ending.user_ended"].difference is not None
    # a simulated source without user text (e.g. imported without it)
    r = user_text(_without_text(t, SIM), n_boot=10)
    assert r.per_source[SIM].status == "not_available" and r.per_source[SIM].reason == "no user messages with text"
    assert r.per_source["human"].status == "ok"
    # too few participants
    few = t.conversations["participant_id"].isin([f"p{i:05d}" for i in range(6)])
    small = Tables(judgements=t.judgements, conversations=t.conversations[few], turns=t.turns)
    r = user_text(small, n_boot=10)
    assert r.status == "not_available" and "only 6 participant(s)" in r.per_source["human"].reason
    assert r.vs_human[SIM].measures["opening.words"].difference is None
    # no human
    sim_only = t.for_source(SIM)
    r = user_text(Tables(judgements=sim_only.judgements, conversations=sim_only.conversations, turns=sim_only.turns))
    assert r.status == "not_available" and r.reason == "no human source to compare with"


def test_user_rows_with_an_arm_are_chats_of_their_own() -> None:
    """Dialogue-Eval: one HIT (conversation) holds a chat per bot, each with its own opening."""
    conv = pd.DataFrame({"conversation_id": ["c1"], "participant_id": ["p1"], "source": ["human"]})
    turns = pd.DataFrame({"conversation_id": "c1", "turn": [0, 1, 0], "role": "user", "arm": ["x", "x", "y"],
                          "text": ["hi there", "how are you?", "hello"]})
    r = user_text(Tables(judgements=pd.DataFrame({"conversation_id": ["c1"], "participant_id": ["p1"], "arm": ["x"]}),
                         conversations=conv, turns=turns), n_boot=5)
    h = r.per_source["human"]
    assert (h.n_openings, h.n_later, h.n_conversations) == (2, 1, 2)


def test_analyze_all_runs_it() -> None:
    from simlab.fidelity.synthetic import make_synthetic

    r = analyze_all(make_synthetic(30, seed=1), n_boot=20, topics=None)
    assert r.analyses["user_text"].status == "ok"
    assert r.analyses["user_text"].vs_human["sim_dynamic"].measures["opening.words"].difference is not None


def test_real_dialogue_eval_user_turns_split_at_random(dialogue_eval_tables: Tables) -> None:
    """Real people on both sides: a random half of the workers relabelled as a simulated source (a true null)."""
    t = dialogue_eval_tables
    workers = np.sort(t.conversations["participant_id"].unique())
    rng = np.random.default_rng(0)
    sim_workers = set(rng.choice(workers, len(workers) // 2, replace=False))
    conv = t.conversations.assign(source=np.where(t.conversations["participant_id"].isin(sim_workers), SIM, "human"))
    r = user_text(Tables(judgements=t.judgements, conversations=conv, turns=t.turns), n_boot=200, seed=0)
    assert r.status == "ok"
    h = r.per_source["human"]
    assert h.n_participants > 100 and h.n_openings > 5 * h.n_participants // 2 and h.n_later > h.n_openings
    comp = r.vs_human[SIM]
    tested = {k: m.difference for k, m in comp.measures.items() if m.difference is not None}
    assert set(MEASURES) - set(tested) == {"ending.user_ended"}  # Dialogue-Eval records no stop_reason
    assert comp.measures["ending.user_ended"].reason == "no stop_reason recorded in sim_dynamic and human"
    # people write openings of a few words, and about as long as the other half of the people
    assert 2 < comp.measures["opening.words"].human.value < 20
    covered = [k for k, d in tested.items() if d.ci_low <= 0 <= d.ci_high]
    assert len(covered) >= len(tested) - 1, tested
    assert 0 < comp.measures["opening.distinct_2"].human.value <= 1


def test_the_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import REPO

    text = (REPO / "docs" / "fidelity.md").read_text(encoding="utf-8")
    section = text[text.index("### The text of user turns"):text.index("## The fidelity index")]
    [example] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(example, "docs/fidelity.md", "exec"), {})
    printed = re.search(r"^# (openings .*)$", example, flags=re.M)
    assert printed is not None and capsys.readouterr().out.strip() == printed.group(1)
