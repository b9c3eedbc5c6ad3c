"""The sessions table: each filter of the URL gives the sessions the stored tables say it should,
sorting and paging cover every session once, bad parameters are refused naming them, and in a
browser the filter form, the back button, sorting, paging and the link to a conversation work."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

import pandas as pd
import pytest

from benchmarks.view_bench import grow
from simlab.store.readers import load_run, read_table
from simlab.view.core import conversation_url
from tests.view.conftest import ViewServer

N_SESSIONS = 120


@pytest.fixture(scope="module")
def big_run(view_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``view_run``'s sessions copied to 120 completed sessions under new participants, ratings
    redrawn, plus one failed session (the benchmark's generator)."""
    return grow(view_run, tmp_path_factory.mktemp("big") / "big-run", N_SESSIONS)


@pytest.fixture(scope="module")
def big_server(big_run: Path):
    server = ViewServer([big_run])
    yield server
    server.close()


def expected(run: Path) -> pd.DataFrame:
    """One row per session, computed from the stored tables with pandas (not the viewer's SQL)."""
    t = load_run(run)
    conv = t.conversations.set_index("conversation_id")
    j = t.judgements
    chosen = j[j["opening_choice"].fillna(False).astype(bool)].set_index("conversation_id")
    first = j[j["position"] == 1].set_index("conversation_id")
    rows = []
    for cid, c in conv.iterrows():
        arm = chosen["arm"].get(cid)
        rows.append({"cid": cid, "participant": c["participant_id"], "source": c["source"], "domain": c["domain"],
                     "status": "completed", "gen_error": int(bool(c["gen_error"])), "stop_reason": c["stop_reason"],
                     "n_turns": int(c["n_turns"]), "arm": arm, "rating": chosen["rating_preference"].get(cid),
                     "first_shown_chosen": None if arm is None else int(arm == first["arm"].get(cid))})
    failures = read_table(run, "failures")
    for cid, f in failures[~failures["conversation_id"].isin(conv.index)].groupby("conversation_id"):
        last = f.iloc[-1]  # read in failure order: the latest last
        rows.append({"cid": cid, "participant": last["participant_id"], "source": "sim_dynamic",
                     "domain": last["domain"], "status": "failed", "gen_error": None, "stop_reason": None,
                     "n_turns": None, "arm": None, "rating": None, "first_shown_chosen": None})
    return pd.DataFrame(rows)


def listed(server: ViewServer, run: str, query: list[tuple[str, str]]) -> list[str]:
    """The conversation ids the table lists for ``query``, every page in order."""
    out: list[str] = []
    page = 1
    while True:
        status, _, body = server.get(f"/runs/{run}/sessions?" + urlencode([*query, ("page", str(page))]))
        assert status == 200, body
        out += re.findall(r'<a class="conversation" href="[^"]+">([^<]+)</a>', body)
        pages = int(re.search(r"<span>page \d+ of (\d+)</span>", body).group(1))
        if page >= pages:
            return out
        page += 1


def test_the_table_lists_every_session_once_over_its_pages(big_server, big_run: Path) -> None:
    ids = listed(big_server, big_run.name, [])
    exp = expected(big_run)
    assert len(exp) == N_SESSIONS + 1  # the generator adds one failed session per hundred
    assert ids == sorted(exp["cid"])
    _, _, body = big_server.get(f"/runs/{big_run.name}/sessions?page=2")
    assert len(re.findall(r'class="conversation"', body)) == 50 and "page 2 of 3" in body
    _, _, last = big_server.get(f"/runs/{big_run.name}/sessions?page=99")  # past the end: the last page
    assert "page 3 of 3" in last and len(re.findall(r'class="conversation"', last)) == N_SESSIONS + 1 - 100


def _cases(exp: pd.DataFrame) -> list[tuple[list[tuple[str, str]], pd.Series]]:
    some_arm = exp["arm"].dropna().iloc[0]
    pid = exp["participant"].iloc[3]
    return [
        ([("domain", "unguided")], exp["domain"] == "unguided"),
        ([("domain", "unguided"), ("domain", "emotional_wellbeing")], exp["domain"].isin(["unguided", "emotional_wellbeing"])),
        ([("source", "sim_dynamic"), ("status", "completed")], (exp["source"] == "sim_dynamic") & (exp["status"] == "completed")),
        ([("arm", some_arm)], exp["arm"] == some_arm),
        ([("participant", pid)], exp["participant"] == pid),
        ([("status", "failed")], exp["status"] == "failed"),
        ([("gen_error", "0")], exp["gen_error"] == 0),
        ([("gen_error", "1")], exp["gen_error"] == 1),
        ([("stop_reason", "user_ended")], exp["stop_reason"] == "user_ended"),
        ([("n_turns", "1")], exp["n_turns"] == 1),
        ([("rating_min", "30"), ("rating_max", "70.5")], exp["rating"].between(30, 70.5)),
        ([("first_shown_chosen", "1")], exp["first_shown_chosen"] == 1),
        ([("first_shown_chosen", "0"), ("domain", "unguided")], (exp["first_shown_chosen"] == 0) & (exp["domain"] == "unguided")),
        ([("source", ""), ("domain", ""), ("rating_min", "")], exp["cid"].notna()),  # a GET form's empty fields
    ]


def test_each_filter_gives_the_sessions_the_tables_say(big_server, big_run: Path) -> None:
    exp = expected(big_run)
    for query, mask in _cases(exp):
        want = sorted(exp.loc[mask.fillna(False).astype(bool), "cid"])
        assert listed(big_server, big_run.name, query) == want, query
    assert (exp["first_shown_chosen"] == 1).sum() > 0 and (exp["rating"].between(30, 70.5)).sum() > 0


def test_sorting_by_a_column_orders_every_page(big_server, big_run: Path) -> None:
    exp = expected(big_run).set_index("cid")
    ids = listed(big_server, big_run.name, [("sort", "rating"), ("order", "desc")])
    ratings = [exp.loc[i, "rating"] for i in ids]
    known = [r for r in ratings if pd.notna(r)]
    assert known == sorted(known, reverse=True) and len(ids) == len(exp)
    assert all(pd.isna(r) for r in ratings[len(known):])  # sessions with no rating (the failed one) last
    ids = listed(big_server, big_run.name, [("sort", "participant")])
    assert [exp.loc[i, "participant"] for i in ids] == sorted(exp["participant"])


def test_bad_parameters_are_refused_naming_them(big_server, big_run: Path) -> None:
    for query, words in ((("rating_min", "abc"), "rating_min='abc': not a number"),
                         (("status", "done"), "status='done': use completed or failed"),
                         (("sort", "1; DROP TABLE x"), "sort='1; DROP TABLE x': sort by one of"),
                         (("page", "0"), "page='0': pages are numbered from 1"),
                         (("gen_error", "yes"), "gen_error='yes': use 0 or 1"),
                         (("n_turns", "two"), "n_turns='two': not a whole number")):
        status, headers, body = big_server.get(f"/runs/{big_run.name}/sessions?" + urlencode([query]))
        assert status == 400 and words in body, (query, body)
        assert headers["Content-Security-Policy"]


def test_filtering_sorting_and_paging_in_a_browser(big_server, big_run: Path, browser, watched) -> None:
    page = watched.page
    base = f"{big_server.url}/runs/{big_run.name}/sessions"
    page.goto(f"{big_server.url}/runs/{big_run.name}")
    page.click("#counts >> text=all sessions")
    page.wait_for_url(base)
    assert f"{N_SESSIONS + 1} sessions" in page.locator("p.summary").inner_text()
    # the form: chosen values go in the URL, empty fields stay out
    page.select_option("select[name=domain]", "unguided")
    page.fill("input[name=rating_min]", "40")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(f"{base}?domain=unguided&rating_min=40")
    exp = expected(big_run)
    n = int(((exp["domain"] == "unguided") & (exp["rating"] >= 40)).sum())
    assert page.locator("p.summary").inner_text().startswith(f"{n} session")
    # back: the unfiltered table and an empty form; forward: the filter again
    page.go_back()
    page.wait_for_url(base)
    assert page.locator("select[name=domain]").input_value() == ""
    assert page.locator("input[name=rating_min]").input_value() == ""
    page.go_forward()
    page.wait_for_url(f"{base}?domain=unguided&rating_min=40")
    assert page.locator("select[name=domain]").input_value() == "unguided"
    # sort by rating, then descending; the filter stays
    page.click("table.sessions th >> text=ratings")
    page.wait_for_url(f"{base}?domain=unguided&rating_min=40&sort=rating")
    page.click("table.sessions th >> text=ratings")
    page.wait_for_url(f"{base}?domain=unguided&rating_min=40&sort=rating&order=desc")
    chosen = [float(t.split()[1]) for t in page.locator("td.ratings span.rating.chosen").all_inner_texts()]
    assert chosen == sorted(chosen, reverse=True) and min(chosen) >= 40
    # paging, without a filter
    page.goto(base)
    page.click("nav.pages >> text=next ›")
    page.wait_for_url(f"{base}?page=2")
    assert page.locator("table.sessions tbody tr").count() == 50
    watched.assert_clean()
    # a conversation's link (the conversation page itself is tested with its module)
    first = page.locator("a.conversation").first
    cid = first.inner_text()
    with page.expect_navigation() as nav:
        first.click()
    assert page.url == big_server.url + conversation_url(big_run.name, cid)
    routes = {r.resource.canonical for r in big_server._app.router.routes() if r.resource is not None}
    if "/runs/{run_id}/sessions/{conversation_id}" in routes:
        assert nav.value.status == 200
        watched.assert_clean()
