"""The viewer's conversation page: one session of a run as the researcher needs to read it (the
transcript per arm, the participant's answers, the persona, the memory lines, every model call, the
failures) and, beside it, the matched human's conversation (same participant and domain) from the
``--human`` data or from the run's own ``human`` rows."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from aiohttp import web

from simlab.errors import InputError
from simlab.fidelity.io import load_human
from simlab.store.connection import closing
from simlab.tables import Tables
from simlab.view.core import STATE, RunHandle, ViewState, render

__all__ = ["setup"]

_HUMAN_CACHE = "conversation.human"


# ------------------------------------------------------------------------------ reading the store


def _rows(conn: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cur = conn.execute(sql, tuple(args))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    # temporary views stand in for an older store's tables (simlab.store.migration)
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ? UNION ALL "
                        "SELECT 1 FROM sqlite_temp_master WHERE name = ?", (name, name)).fetchone() is not None


def _table(conn: sqlite3.Connection, name: str, where: str, args: Sequence[Any], order: str) -> list[dict[str, Any]]:
    """Rows of ``name`` (none when the store was made before the table existed)."""
    if not _has_table(conn, name):
        return []
    return _rows(conn, f"SELECT * FROM {name} WHERE {where} ORDER BY {order}", args)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _meta(conn: sqlite3.Connection) -> dict[str, Any]:
    try:
        return {str(k): _json(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError:
        return {}


# ------------------------------------------------------------------------------ the page's pieces


@dataclass
class Side:
    """One conversation as the page shows it (the simulated session, or a human one beside it)."""

    conversation_id: str
    source: str
    domain: str
    letters: list[tuple[str, str]]
    """(letter, arm) in display order."""
    turns: list[dict[str, Any]] = field(default_factory=list)
    judgements: list[dict[str, Any]] = field(default_factory=list)
    bdm: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    origin: str = ""
    """Where the conversation was read from (the run, or the human data's path)."""


def _display_order(arm_letters: Mapping[str, str], arm_positions: Mapping[str, int] | None) -> list[tuple[str, str]]:
    if arm_positions:
        arms = sorted(arm_letters, key=lambda a: arm_positions.get(a, 99))
    else:
        arms = sorted(arm_letters, key=lambda a: arm_letters[a])
    return [(arm_letters[a], a) for a in arms]


def _stop_text(turn: int, last: int, stop_reason: str | None) -> str:
    """The participant's stop decision after ``turn`` (0-based); the last turn says why it ended."""
    if turn < last:
        return "continued"
    return {"user_ended": "stopped (the participant ended it)", "max_turns": "ended: the turn cap",
            "context_limit": "ended: the context budget", "error": "ended: an error"}.get(
        stop_reason or "", f"ended ({stop_reason})" if stop_reason else "")


def _turns(turn_rows: Iterable[Mapping[str, Any]], order: Sequence[tuple[str, str]], n_turns: int | None,
           stop_reason: str | None) -> list[dict[str, Any]]:
    rank = {arm: i for i, (_, arm) in enumerate(order)}
    by_turn: dict[int, dict[str, Any]] = {}
    for t in turn_rows:
        n = int(t["turn"])
        entry = by_turn.setdefault(n, {"turn": n + 1, "user": None, "replies": []})
        if t["role"] == "user":
            entry["user"] = t["text"]
        else:
            entry["replies"].append({"arm": t.get("arm") or "", "letter": t.get("letter") or "", "text": t["text"],
                                     "rating": _num(t.get("turn_rating"), 0), "gen_error": bool(t.get("gen_error")),
                                     "n_tokens": t.get("n_tokens")})
    last = max(by_turn) if by_turn else 0
    if n_turns:
        last = max(last, int(n_turns) - 1)
    out = []
    for n in sorted(by_turn):
        entry = by_turn[n]
        entry["replies"].sort(key=lambda r: (rank.get(r["arm"], 99), r["letter"]))
        entry["stop"] = _stop_text(n, last, stop_reason)
        out.append(entry)
    return out


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _flag(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return "yes" if bool(value) else "no"


def _judgements(rows: Iterable[Mapping[str, Any]], order: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    rank = {arm: i for i, (_, arm) in enumerate(order)}
    out = [{"arm": r["arm"], "letter": r.get("letter") or "", "position": r.get("position") or "",
            "opening_choice": _flag(r.get("opening_choice")), "provenance_guess": _flag(r.get("provenance_guess")),
            "rank": "" if r.get("rank") is None or pd.isna(r.get("rank")) else int(r["rank"]),
            "provenance_rank": "" if r.get("provenance_rank") is None or pd.isna(r.get("provenance_rank"))
            else int(r["provenance_rank"]),
            "preference": _num(r.get("rating_preference"), 0), "engagingness": _num(r.get("rating_engagingness"), 0),
            "provenance": _num(r.get("rating_provenance"), 0),
            "wtp_bid": "" if _num(r.get("wtp_bid")) == "" else "$" + _num(r.get("wtp_bid"))}
           for r in rows]
    out.sort(key=lambda j: (rank.get(j["arm"], 99), j["letter"]))
    return out


def _memory_lines(side: Side, judgements: Sequence[Mapping[str, Any]]) -> list[str]:
    """The memory lines the simulator was shown in its later questions, rebuilt from the stored answers
    in the protocol's words (opening pick, each turn's ratings, each decision to continue)."""
    letters = [letter for letter, _ in side.letters]
    lines = []
    preferred = next((j["letter"] for j in judgements if j.get("opening_choice")), None)
    personal = next((j["letter"] for j in judgements if j.get("provenance_guess")), None)
    if preferred and personal:
        lines.append(f"After the first responses you preferred {preferred} and thought {personal} was the one "
                     "personalised to you.")
    for t in side.turns:
        scores = {r["letter"]: r["rating"] for r in t["replies"] if r["rating"] != ""}
        if scores:
            shown = ", ".join(f"{x} {float(scores[x]):g}" for x in letters if x in scores)
            lines.append(f"Your ratings of the responses to your message {t['turn']}: {shown}.")
        if t["stop"] == "continued":
            lines.append(f"After your message {t['turn']} you chose to continue the conversation.")
    return lines


def _persona(meta: Mapping[str, Any], participant: Mapping[str, Any] | None) -> dict[str, Any]:
    """The persona as the run knew it: its id, rendering and simulator model (stored) and its record
    from the persona file the run's config names (the store keeps no persona text)."""
    out: dict[str, Any] = {"record": None, "file": "", "note": "", "persona_id": "", "rendering": "",
                           "simulator_model": ""}
    if participant is None:
        out["note"] = "The store has no participant row for this session."
        return out
    out.update({k: participant.get(k) or "" for k in ("persona_id", "rendering", "simulator_model")})
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    persona_file = (config or {}).get("personas")
    if not participant.get("persona_id"):
        out["note"] = "No persona: a no-persona control or human data."
        return out
    if not persona_file:
        out["note"] = "The run's config names no persona file."
        return out
    path = Path(str(persona_file))
    out["file"] = str(path)
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and str(record.get("persona_id")) == str(participant["persona_id"]):
                    out["record"] = [(str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
                                     for k, v in record.items()]
                    return out
    except OSError as exc:
        out["note"] = (f"The persona file the run used cannot be read here ({exc.strerror or exc}); the store keeps "
                       "the persona id and rendering only.")
        return out
    out["note"] = f"Persona {participant['persona_id']!r} is no longer in the persona file."
    return out


def _calls(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        names = str(r.get("prompt_name") or "").split("+")
        hashes = str(r.get("prompt_hash") or "").split("+")
        templates = [(n, hashes[i] if i < len(hashes) else "") for i, n in enumerate(names) if n]
        out.append({**r, "templates": templates, "latency": _num(r.get("latency_s"), 3),
                    "cost": "" if r.get("cost_usd") is None else f"{float(r['cost_usd']):.6f}"})
    return out


# ------------------------------------------------------------------------------ the human beside it


def _human_tables(state: ViewState) -> tuple[Tables | None, str]:
    """The ``--human`` data (loaded once per version of its files) and why it is missing if it is."""
    path = state.human
    if path is None:
        return None, ""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    if not files:
        return None, f"The human data {path} is missing."
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    cached = state.extra.get(_HUMAN_CACHE)
    if cached is not None and cached[0] == stamp:
        return cached[1], cached[2]
    try:
        tables: Tables | None = load_human(path)
        error = ""
    except InputError as exc:
        tables, error = None, f"The human data could not be read: {exc}"
    state.extra[_HUMAN_CACHE] = (stamp, tables, error)
    return tables, error


def _frame_rows(frame: pd.DataFrame | None, column: str, value: str) -> list[dict[str, Any]]:
    if frame is None or column not in frame:
        return []
    part = frame[frame[column].astype(str) == value]
    return [{k: (None if v is pd.NA or (isinstance(v, float) and pd.isna(v)) else v) for k, v in row.items()}
            for row in part.to_dict("records")]


def _side_from_tables(tables: Tables, conv: Mapping[str, Any], origin: str) -> Side:
    cid = str(conv["conversation_id"])
    letters_map = _json(conv.get("arm_letters"))
    if not isinstance(letters_map, Mapping) or not letters_map:
        judg = _frame_rows(tables.judgements, "conversation_id", cid)
        letters_map = {str(j["arm"]): str(j.get("letter") or "") for j in judg}
    positions = _json(conv.get("arm_positions"))
    order = _display_order(letters_map, positions if isinstance(positions, Mapping) else None)
    side = Side(conversation_id=cid, source=str(conv.get("source") or "human"), domain=str(conv.get("domain") or ""),
                letters=order, origin=origin)
    turns = _frame_rows(tables.turns, "conversation_id", cid)
    turns.sort(key=lambda t: (int(t["turn"]), t["role"] != "user"))
    n_turns = conv.get("n_turns")
    side.turns = _turns(turns, order, None if n_turns is None else int(n_turns), _none(conv.get("stop_reason")))
    side.judgements = _judgements(_frame_rows(tables.judgements, "conversation_id", cid), order)
    side.bdm = _frame_rows(tables.bdm, "conversation_id", cid)
    return side


def _none(value: Any) -> Any:
    return None if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)) else value


def _matched_humans(state: ViewState, handle: RunHandle, conn: sqlite3.Connection, conv: Mapping[str, Any]
                    ) -> tuple[list[Side], str]:
    """The human conversations with this session's participant and domain: the run's own ``human`` rows,
    then the ``--human`` data's; and a note when there is none (or the data could not be read)."""
    if conv.get("source") == "human":
        return [], ""
    pid, domain = str(conv["participant_id"]), str(conv["domain"])
    out: list[Side] = []
    own = _rows(conn, "SELECT * FROM conversations WHERE participant_id = ? AND domain = ? AND source = 'human' "
                "ORDER BY conversation_id", (pid, domain))
    for row in own:
        out.append(_side_from_store(conn, row, origin=f"run {handle.run_id}"))
    tables, error = _human_tables(state)
    if tables is not None and tables.conversations is not None:
        c = tables.conversations
        hit = c[(c["participant_id"].astype(str) == pid) & (c["domain"].astype(str) == domain)
                & (c["source"].astype(str) == "human")]
        for row in hit.to_dict("records"):
            out.append(_side_from_tables(tables, row, origin=str(state.human)))
    if out:
        return out, error
    if error:
        return [], error
    where = "this run" + ("" if state.human is None else f" or the human data ({state.human})")
    return [], f"No human conversation of participant {pid!r} in domain {domain!r} in {where}."


def _side_from_store(conn: sqlite3.Connection, conv: Mapping[str, Any], origin: str) -> Side:
    cid = str(conv["conversation_id"])
    letters_map = _json(conv.get("arm_letters")) or {}
    positions = _json(conv.get("arm_positions"))
    order = _display_order(letters_map, positions if isinstance(positions, Mapping) else None)
    side = Side(conversation_id=cid, source=str(conv["source"]), domain=str(conv["domain"]), letters=order,
                origin=origin)
    turns = _table(conn, "turns", "conversation_id = ?", (cid,), "turn, role DESC, letter")
    side.turns = _turns(turns, order, conv.get("n_turns"), conv.get("stop_reason"))
    side.judgements = _judgements(_table(conn, "judgements", "conversation_id = ?", (cid,), "position"), order)
    side.bdm = _table(conn, "bdm", "conversation_id = ?", (cid,), "arm")
    side.answers = _table(conn, "answers", "conversation_id = ?", (cid,), "instrument, turn, letter")
    return side


# ------------------------------------------------------------------------------ the handler


def _load(state: ViewState, handle: RunHandle, conversation_id: str) -> dict[str, Any]:
    with closing(handle.connect()) as conn:
        conv_rows = _table(conn, "conversations", "conversation_id = ?", (conversation_id,), "conversation_id")
        failures = _table(conn, "failures", "conversation_id = ?", (conversation_id,), "failure_id")
        if not conv_rows and not failures:
            raise web.HTTPNotFound(text=f"no session {conversation_id!r} in run {handle.run_id!r} (neither completed "
                                        "nor failed): check the id in the run's sessions table")
        meta = _meta(conn)
        # the calls committed with this session or its failures (recorded_with is indexed)
        calls = _calls(_table(conn, "llm_calls", "recorded_with = ?", (conversation_id,), "call_id"))
        instruments = _table(conn, "instruments", "conversation_id = ?", (conversation_id,), "rowid")
        arms = {r["arm"]: r.get("description") or "" for r in _table(conn, "arms", "1", (), "config_order")}
        if conv_rows:
            conv = conv_rows[0]
            side = _side_from_store(conn, conv, origin=f"run {handle.run_id}")
            judgement_rows = _table(conn, "judgements", "conversation_id = ?", (conversation_id,), "position")
            participant_rows = _table(conn, "participants", "participant_id = ? AND source = ?",
                                      (conv["participant_id"], conv["source"]), "participant_id")
            humans, human_note = _matched_humans(state, handle, conn, conv)
        else:
            first = failures[-1]
            conv = {"conversation_id": conversation_id, "participant_id": first["participant_id"],
                    "domain": first["domain"], "source": "", "stop_reason": None}
            side, judgement_rows, humans, human_note = None, [], [], ""
            participant_rows = _table(conn, "participants", "participant_id = ?", (first["participant_id"],),
                                      "source")
    simulator = (meta.get("config") or {}).get("simulator") if isinstance(meta.get("config"), Mapping) else None
    memory = str((simulator or {}).get("memory") or "") if isinstance(simulator, Mapping) else ""
    return {
        "conv": conv, "side": side, "humans": humans, "human_note": human_note, "failures": failures,
        "calls": calls, "instruments": instruments, "arm_descriptions": arms,
        "persona": _persona(meta, participant_rows[0] if participant_rows else None),
        "memory": memory,
        "memory_lines": _memory_lines(side, judgement_rows) if side is not None and memory == "session" else [],
        "completed": bool(conv_rows),
    }


async def conversation_page(request: web.Request) -> web.Response:
    """``/runs/{run_id}/sessions/{conversation_id}``; ``?arms=1`` names the arms instead of their letters."""
    state = request.app[STATE]
    handle = state.run(request.match_info["run_id"])
    cid = request.match_info["conversation_id"]
    show_arms = request.query.get("arms") == "1"
    data = _load(state, handle, cid)
    # each part quoted whole: an id may hold "/", "?" or "#"
    here = f"/runs/{quote(handle.run_id, safe=':')}/sessions/{quote(cid, safe=':')}"
    return render(request, "conversation.html.j2", run=handle, cid=cid, here=here, show_arms=show_arms, **data)


def setup(app: web.Application) -> None:
    """Register the conversation page on ``app``."""
    app.router.add_get("/runs/{run_id}/sessions/{conversation_id}", conversation_page, name="conversation")
