"""The leaderboard: planted simulators come out in the planted order with separated index CIs, the
humans row reads about 100, paired tests and the JSON round-trip, and bad input."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest

from simlab.errors import InputError
from simlab.fidelity import leaderboard as leaderboard_api
from simlab.fidelity.calibration import leaderboard as cal
from simlab.fidelity.fidelity_index import leaderboard
from simlab.fidelity.leaderboard_result import HUMANS_ROW, Leaderboard
from simlab.tables import Tables


@lru_cache(maxsize=None)
def planted() -> Tables:
    """Real-shaped humans and three stub simulators: one copies its matched human's judgements in 90%
    of conversations (at random otherwise), one answers at random, one always picks the first shown."""
    return cal.plant(cal.humans(60, seed=5), {"sim_dynamic:copy": ("copy", 0.9), "sim_dynamic:random": ("copy", 0.0),
                                              "first_shown": ("first_shown", 1.0)}, seed=5)


@lru_cache(maxsize=None)
def planted_board() -> Leaderboard:
    return leaderboard(planted(), n_boot=200, seed=3, details=False)


def test_planted_simulators_are_ordered_as_planted_and_their_index_cis_separate_them() -> None:
    lb = planted_board()
    rows = {r.source: r for r in lb.leaderboard}
    copy, rnd, first = rows["sim_dynamic:copy"], rows["sim_dynamic:random"], rows["first_shown"]
    order = [r.source for r in lb.leaderboard if r.kind == "simulated"]
    assert order == ["sim_dynamic:copy", "sim_dynamic:random", "first_shown"] or order[0] == "sim_dynamic:copy"
    assert copy.index.value > 85
    assert copy.index.ci_low > max(rnd.index.ci_high, first.index.ci_high)
    assert rnd.index.value < 30  # 0 is the uniform-random participant (clipped at 0)
    # ranking by display order says nothing of the arms: the hierarchy sits at the random reference
    hierarchy = first.components["hierarchy"].score
    assert hierarchy is not None and hierarchy.ci_low < 0 < hierarchy.ci_high
    # the humans' weak first-shown bias (60 participants) is too close to random to scale by: out
    info = {i.name: i for i in lb.components}
    assert not info["position"].in_index and "reference" in (info["position"].reason or "")
    assert all(info[c].in_index for c in ("hierarchy", "opening", "ratings", "bids", "turns", "individual"))
    for name in ("hierarchy", "opening", "ratings", "bids", "turns", "individual"):
        comp = copy.components[name]
        assert comp.score is not None and comp.score.value > 70, name
    assert copy.missing.keys() == {"position"}
    # the tests between them: the copy is closer than both, after Holm's correction
    index_tests = {(p.a, p.b): p for p in lb.pairwise if p.measure == "index"}
    assert index_tests[("sim_dynamic:copy", "sim_dynamic:random")].closer == "sim_dynamic:copy"
    assert index_tests[("sim_dynamic:copy", "first_shown")].closer == "sim_dynamic:copy"
    assert "Holm" in lb.correction


def test_humans_row_reads_about_100_with_a_ci_and_records_its_split() -> None:
    lb = planted_board()
    humans = next(r for r in lb.leaderboard if r.source == HUMANS_ROW)
    assert humans.kind == "humans"
    assert lb.human_split is not None and lb.human_split.n_participants == (30, 30)
    assert humans.n_participants == 30
    assert humans.index.value >= 90 and humans.index.ci_low < humans.index.value <= humans.index.ci_high
    assert humans.index.ci_low > 50  # the resolution of 30 vs 30 participants
    assert "individual" in humans.missing  # no matched participants between the halves
    # no test involves the humans row: it is the yardstick, not a contestant
    assert all(HUMANS_ROW not in (p.a, p.b) for p in lb.pairwise)


def test_rows_descend_and_the_json_round_trips() -> None:
    lb = planted_board()
    values = [r.index.value for r in lb.leaderboard]
    assert values == sorted(values, reverse=True)
    back = Leaderboard.model_validate_json(lb.model_dump_json())
    assert [r.source for r in back.leaderboard] == [r.source for r in lb.leaderboard]
    assert back.leaderboard[1].index.ci_low == pytest.approx(lb.leaderboard[1].index.ci_low)
    assert lb.model_dump(mode="json")["leaderboard"][0].keys() >= {"source", "index", "components"}


def test_same_seed_same_board_and_the_bootstrap_pairs_sources() -> None:
    t = cal.simulate(11, effect=False, n=40)
    a = leaderboard(t, n_boot=100, seed=4, details=False)
    b = leaderboard(t, n_boot=100, seed=4, details=False)
    assert a.model_dump_json() == b.model_dump_json()
    # paired: the humans' noise is shared by both variants' scores, so their difference is tighter than
    # two independent intervals would make it
    test = next(p for p in a.pairwise if p.measure == "index")
    rows = {r.source: r for r in a.leaderboard}
    w1, w2 = (rows[v].index.ci_high - rows[v].index.ci_low for v in ("v1", "v2"))
    assert test.difference.ci_high - test.difference.ci_low < 0.9 * math.hypot(w1, w2)


def test_a_component_the_humans_lack_is_out_of_the_index_with_the_reason() -> None:
    t = planted()
    j = t.judgements.copy()
    j.loc[j["source"] == "human", "wtp_bid"] = np.nan
    lb = leaderboard(Tables(judgements=j, conversations=t.conversations), n_boot=50, details=False)
    info = next(i for i in lb.components if i.name == "bids")
    assert not info.in_index and "wtp_bid" in (info.reason or "")
    for row in lb.leaderboard:
        assert "bids" in row.missing and row.components["bids"].score is None
        assert not math.isnan(row.index.value)


def test_details_flatten_each_sources_comparisons() -> None:
    t = cal.plant(cal.humans(30, seed=2), {"sim_dynamic:copy": ("copy", 0.9)}, seed=2)
    lb = leaderboard_api(t, n_boot=30, seed=1, details=True, topics=None)
    assert lb.details is not None
    row = next(r for r in lb.leaderboard if r.source == "sim_dynamic:copy")
    assert "hierarchy.kendall_tau" in row.comparisons
    assert any(k.startswith("position.ranked_best.excess_vs_human") for k in row.comparisons)
    assert any(k.startswith("agreement.") for k in row.comparisons)
    assert next(r for r in lb.leaderboard if r.source == HUMANS_ROW).comparisons == {}


def test_bad_input_names_the_source() -> None:
    t = planted()
    human_only = Tables(judgements=t.judgements[t.judgements["source"] == "human"],
                        conversations=t.conversations[t.conversations["source"] == "human"])
    with pytest.raises(InputError, match="no simulated source") as e:
        leaderboard(human_only, n_boot=10, details=False)
    assert e.value.field == "source"
    sim_only = Tables(judgements=t.judgements[t.judgements["source"] != "human"],
                      conversations=t.conversations[t.conversations["source"] != "human"])
    with pytest.raises(InputError, match="no human data") as e:
        leaderboard(sim_only, n_boot=10, details=False)
    assert e.value.field == "source"
    j = t.judgements
    few = j[(j["source"] != "first_shown") | j["participant_id"].isin(sorted(j["participant_id"].unique())[:5])]
    small = leaderboard(Tables(judgements=few), n_boot=10, details=False)  # too small a source: a row saying so
    row = next(r for r in small.leaderboard if r.source == "first_shown")
    assert row.n_participants == 5 and math.isnan(row.index.value) and small.leaderboard[-1] is row
    assert all("fewer than 10" in (row.components[c].reason or "") for c in ("hierarchy", "individual"))
    humans_few = j[(j["source"] != "human") | j["participant_id"].isin(sorted(j["participant_id"].unique())[:5])]
    with pytest.raises(InputError, match="the human data have 5 participant") as e:
        leaderboard(Tables(judgements=humans_few), n_boot=10, details=False)
    assert e.value.field == "source"


def test_a_source_named_like_the_humans_row_is_refused() -> None:
    t = planted()
    j = t.judgements.assign(source=t.judgements["source"].replace({"first_shown": HUMANS_ROW}))
    with pytest.raises(InputError, match="human split-half row") as e:
        leaderboard(Tables(judgements=j), n_boot=10, details=False)
    assert e.value.field == "source"


def test_planted_simulators_on_real_human_data_dialogue_eval(dialogue_eval_tables: Tables) -> None:
    # real people (Dialogue-Eval: six bots rated per HIT, ranks derived from the ratings, no bids,
    # opening choices or turn counts): the components the data lack are out with their reasons
    t = cal.plant(dialogue_eval_tables, {"copy": ("copy", 0.9), "random": ("copy", 0.0),
                                         "first_shown": ("first_shown", 1.0)}, seed=1)
    lb = leaderboard(t, n_boot=200, seed=0, details=False)
    rows = {r.source: r for r in lb.leaderboard}
    assert [r.source for r in lb.leaderboard if r.kind == "simulated"][0] == "copy"
    assert rows["copy"].index.ci_low > max(rows["random"].index.ci_high, rows["first_shown"].index.ci_high)
    humans = rows[HUMANS_ROW]
    assert humans.index.value >= 90 and humans.index.ci_low > 80
    info = {i.name: i for i in lb.components}
    assert info["hierarchy"].in_index and info["ratings"].in_index
    assert not info["bids"].in_index and "wtp_bid" in (info["bids"].reason or "")
    assert not info["individual"].in_index and "rank_derived" in (info["individual"].reason or "")
