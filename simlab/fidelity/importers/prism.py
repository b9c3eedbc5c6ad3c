"""PRISM (Kirk et al. 2024) ``conversations.jsonl`` (+ ``survey.jsonl``) -> the record schema.

Mapping (documented in docs/fidelity.md):

- participant_id = ``user_id``; domain = ``conversation_type`` (unguided,
  values guided, controversy guided -> unguided, values, controversy).
- judgements: one row per model of the opening turn (turn 0); arm = ``model_name``;
  rating_preference = the 1-100 slider rescaled to 0-100 as (score - 1) / 99 * 100;
  opening_choice = ``if_chosen``; rank from score (1 = best; ties: the chosen
  response first, then ``within_turn_id``; ``rank_derived`` = true). ``within_turn_id`` is not the display
  order, so position and letter stay null.
- turns: every user and model message; model rows carry arm and turn_rating (the
  rescaled score, also at turn 0), plus ``within_turn_id`` and ``chosen``.
- participants: one row per survey record (nested fields flattened with ``_``),
  plus any user seen only in the conversations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simlab.errors import InputError
from simlab.fidelity.io import normalise, read_file
from simlab.schema import PRISM_DOMAINS
from simlab.tables import Tables

__all__ = ["CONVERSATION_TYPES", "import_prism", "rescale_score"]

CONVERSATION_TYPES: dict[str, str] = PRISM_DOMAINS
_ROLES = {"user": "user", "model": "assistant"}


def rescale_score(score: float) -> float:
    """PRISM's 1-100 slider -> the 0-100 scale of the record schema."""
    return (score - 1.0) / 99.0 * 100.0


def import_prism(conversations_path: str | Path, survey_path: str | Path | None = None) -> Tables:
    """Import PRISM conversations (and optionally the survey) as human ``Tables``.

    >>> tables = import_prism("prism/conversations.jsonl", "prism/survey.jsonl")  # doctest: +SKIP
    >>> tables.judgements[["participant_id", "arm", "rating_preference", "rank"]].head()  # doctest: +SKIP
    """
    path = Path(conversations_path)
    if not path.is_file():
        raise InputError("no such file", file=path)
    frame, rows = read_file(path)
    judgements: list[dict[str, Any]] = []
    conversations: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rec, row in zip(frame.to_dict("records") if len(frame) else [], rows, strict=True):
        conv = _conversation(rec, path, int(row))
        if conv["conversation_id"] in seen:
            raise InputError(f"duplicated conversation {conv['conversation_id']!r}", file=path, row=int(row),
                             field="conversation_id")
        seen.add(conv["conversation_id"])
        conv_turns, opening = _history(rec, conv, path, int(row))
        conv["n_turns"] = sum(t["role"] == "user" for t in conv_turns)
        conversations.append(conv)
        turns.extend(conv_turns)
        judgements.extend(opening)
    if not conversations:
        raise InputError("no conversations in the file", file=path)

    conv_frame = pd.DataFrame(conversations)
    participants = _participants(Path(survey_path) if survey_path is not None else None, conv_frame)
    tables = Tables(
        judgements=pd.DataFrame(judgements),
        conversations=conv_frame,
        turns=pd.DataFrame(turns).astype({"chosen": "boolean"}),
        participants=participants,
    )
    return normalise(tables, origin=str(path))


def _conversation(rec: dict[str, Any], path: Path, row: int) -> dict[str, Any]:
    for key in ("conversation_id", "user_id", "conversation_type"):
        if rec.get(key) is None or (isinstance(rec[key], float) and np.isnan(rec[key])) or str(rec[key]).strip() == "":
            raise InputError("missing value", file=path, row=row, field=key)
    kind = str(rec["conversation_type"]).strip().lower()
    if kind not in CONVERSATION_TYPES:
        raise InputError(
            f"{rec['conversation_type']!r} is not one of {', '.join(CONVERSATION_TYPES)}", file=path, row=row,
            field="conversation_type",
        )
    out = {
        "conversation_id": str(rec["conversation_id"]),
        "participant_id": str(rec["user_id"]),
        "source": "human",
        "domain": CONVERSATION_TYPES[kind],
        "in_domain": True,
    }
    feedback = rec.get("open_feedback")
    if isinstance(feedback, str):
        out["open_feedback"] = feedback
    return out


def _history(rec: dict[str, Any], conv: dict[str, Any], path: Path, row: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    history = rec.get("conversation_history")
    if not isinstance(history, list) or not history:
        raise InputError("expected a non-empty list of turns", file=path, row=row, field="conversation_history")
    cid = conv["conversation_id"]
    turns: list[dict[str, Any]] = []
    opening: list[dict[str, Any]] = []
    for k, item in enumerate(history):
        where = f"conversation_history[{k}]"
        if not isinstance(item, dict):
            raise InputError("expected an object", file=path, row=row, field=where)
        turn = item.get("turn")
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
            raise InputError(f"{turn!r} is not a turn number (integer >= 0)", file=path, row=row, field=f"{where}.turn")
        role = item.get("role")
        if role not in _ROLES:
            raise InputError(f"{role!r} is not 'user' or 'model'", file=path, row=row, field=f"{where}.role")
        text = item.get("content")
        if not isinstance(text, str):
            raise InputError("missing text", file=path, row=row, field=f"{where}.content")
        entry = {"conversation_id": cid, "turn": turn, "role": _ROLES[role], "text": text, "arm": None,
                 "turn_rating": np.nan, "within_turn_id": item.get("within_turn_id"), "chosen": pd.NA}
        if role == "model":
            arm = item.get("model_name")
            if not isinstance(arm, str) or not arm.strip():
                raise InputError("missing model name", file=path, row=row, field=f"{where}.model_name")
            score = item.get("score")
            if isinstance(score, bool) or not isinstance(score, int | float) or not 1 <= score <= 100:
                raise InputError(f"{score!r} is not a score in 1-100", file=path, row=row, field=f"{where}.score")
            chosen = item.get("if_chosen")
            if not isinstance(chosen, bool):
                raise InputError(f"{chosen!r} is not true/false", file=path, row=row, field=f"{where}.if_chosen")
            entry.update(arm=arm, turn_rating=rescale_score(float(score)), chosen=chosen)
            if turn == 0:
                if any(j["arm"] == arm for j in opening):
                    raise InputError(f"model {arm!r} answers the opening twice", file=path, row=row,
                                     field=f"{where}.model_name")
                opening.append({"conversation_id": cid, "arm": arm, "rating_preference": entry["turn_rating"],
                                "opening_choice": chosen, "_wid": _order_key(item.get("within_turn_id"), k)})
        turns.append(entry)
    if not opening:
        raise InputError("no model responses at the opening turn (turn 0)", file=path, row=row,
                         field="conversation_history")
    if not any(t["role"] == "user" and t["turn"] == 0 for t in turns) and isinstance(rec.get("opening_prompt"), str):
        turns.insert(0, {"conversation_id": cid, "turn": 0, "role": "user", "text": rec["opening_prompt"], "arm": None,
                         "turn_rating": np.nan, "within_turn_id": None, "chosen": pd.NA})
    # rank: higher score first; ties: the chosen response, then within_turn_id
    order = sorted(range(len(opening)), key=lambda i: (-opening[i]["rating_preference"],
                                                      not opening[i]["opening_choice"], opening[i]["_wid"]))
    for rank, i in enumerate(order, start=1):
        opening[i]["rank"] = rank
        opening[i]["rank_derived"] = True  # from the score, not a separate ranking instrument
    for j in opening:
        del j["_wid"]
    return turns, opening


def _order_key(within_turn_id: object, k: int) -> tuple[int, int]:
    return (int(within_turn_id), k) if isinstance(within_turn_id, int) else (1 << 30, k)


def _participants(survey_path: Path | None, conversations: pd.DataFrame) -> pd.DataFrame:
    users = conversations[["participant_id"]].drop_duplicates()
    if survey_path is None:
        return users.assign(source="human").reset_index(drop=True)
    if not survey_path.is_file():
        raise InputError("no such file", file=survey_path)
    frame, rows = read_file(survey_path)
    if "user_id" not in frame.columns:
        raise InputError("missing required field", file=survey_path, field="user_id")
    missing = frame["user_id"].isna().to_numpy()
    if missing.any():
        raise InputError("missing value", file=survey_path, row=int(rows[np.flatnonzero(missing)[0]]), field="user_id")
    flat = pd.json_normalize(frame.to_dict("records"), sep="_")
    # lists (e.g. several languages) as JSON text, so every format can store them
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, list | dict)).any():
            flat[col] = flat[col].map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v)
    flat = flat.rename(columns={"user_id": "participant_id"})
    flat["participant_id"] = flat["participant_id"].astype(str)
    dup = flat["participant_id"].duplicated().to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        raise InputError(f"duplicated user {flat['participant_id'].iloc[pos]!r}", file=survey_path, row=int(rows[pos]),
                         field="user_id")
    flat.insert(1, "source", "human")
    extra = users[~users["participant_id"].isin(flat["participant_id"])].assign(source="human")
    return pd.concat([flat, extra], ignore_index=True)
