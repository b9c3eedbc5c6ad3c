"""Dialogue-Eval (Ji et al., ACL 2022) MTurk CSVs -> the record schema.

Each CSV row is one HIT assignment: a worker chats with six bots in presentation
order and rates each chat on seven 0-100 sliders. Mapping (documented in
docs/fidelity.md):

- conversation_id = HITId (``HITId:AssignmentId`` when a HIT has several assignments
  in the file); participant_id = WorkerId; arm = the bot (``task{i}``);
  position = i + 1; letter = A..F; domain = the collection round from the file name
  (``FreeTopicRound1.csv`` -> ``free_topic_round1``), not a PRISM domain.
- rating_preference = mean of the seven sliders with robotic and repetitive
  reversed (100 - x); the raw sliders are kept as ``score_<name>``.
- rank from rating_preference within the HIT, 1 = best, ties to the earlier position;
  ``rank_derived`` = true says so (rank is not a separate instrument here).
- turns: each ``dialogue{i}`` is a separate chat with one bot, so user rows carry
  that bot's arm and letter too (turn k = the k-th user message, 0-based).
- Skipped with a warning: rows whose answer holds no chats (the worker sent only
  feedback; 1/2/2 rows in the three public files) and HITs that showed one bot
  twice (16 rows of FreeTopicRound2): they have no one-response-per-arm ranking.
  A partly missing or malformed answer is an InputError.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simlab.errors import InputError
from simlab.fidelity.io import letters, normalise, read_file
from simlab.tables import Tables

__all__ = ["SLIDERS", "REVERSED_SLIDERS", "import_dialogue_eval", "round_name"]

SLIDERS: tuple[str, ...] = ("robotic", "interesting", "fun", "consistent", "fluent", "repetitive", "topic")
REVERSED_SLIDERS: frozenset[str] = frozenset({"robotic", "repetitive"})
_ANSWER = "Answer.taskAnswers"
_REQUIRED = ("HITId", "WorkerId", "AssignmentId", _ANSWER)


def round_name(path: Path) -> str:
    """``FreeTopicRound1.csv`` -> ``free_topic_round1``; ``IceBreaker.csv`` -> ``ice_breaker``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", path.stem).lower()


def import_dialogue_eval(src: str | Path) -> Tables:
    """Import one Dialogue-Eval CSV, or every ``*.csv`` in a directory (one round each).

    >>> tables = import_dialogue_eval("../shared/data/dialogue_eval")  # doctest: +SKIP
    >>> tables.judgements.groupby("conversation_id").size().unique()  # doctest: +SKIP
    array([6])
    """
    src = Path(src)
    if src.is_dir():
        files = sorted(src.glob("*.csv"))
        if not files:
            raise InputError("no .csv files here", file=src)
    elif src.is_file():
        files = [src]
    else:
        raise InputError("no such file or directory", file=src)
    parts = [_import_file(f) for f in files]
    judgements = pd.concat([p[0] for p in parts], ignore_index=True)
    conversations = pd.concat([p[1] for p in parts], ignore_index=True)
    turns = pd.concat([p[2] for p in parts], ignore_index=True)
    dup = conversations.duplicated("conversation_id")
    if dup.any():
        row = conversations[dup].iloc[0]
        raise InputError(
            f"HIT {row['conversation_id']!r} appears in two files", file=row["file"], row=int(row["row"]), field="HITId"
        )
    conversations = conversations.drop(columns=["file", "row"])
    participants = conversations[["participant_id", "source"]].drop_duplicates("participant_id").reset_index(drop=True)
    tables = Tables(judgements=judgements, conversations=conversations, turns=turns, participants=participants)
    return normalise(tables, origin=str(src))


def _import_file(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    frame, rows = read_file(path)
    for col in _REQUIRED:
        if col not in frame.columns:
            raise InputError("missing required column", file=path, field=col)
    domain = round_name(path)
    n_assignments = frame["HITId"].map(frame["HITId"].value_counts())
    judgements: list[dict[str, Any]] = []
    conversations: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    skipped: dict[str, list[int]] = {"whose answer holds no chats": [], "that show a bot twice": []}
    for i, rec in enumerate(frame.to_dict("records")):
        row = int(rows[i])
        for col in _REQUIRED:
            if not isinstance(rec[col], str) or not rec[col].strip():
                raise InputError("missing value", file=path, row=row, field=col)
        answer = _parse_answer(rec[_ANSWER], path, row)
        n_bots = _count_bots(answer)
        if n_bots == 0:
            skipped["whose answer holds no chats"].append(row)
            continue
        arms = [_field(answer, f"task{k}", path, row) for k in range(n_bots)]
        if len(set(arms)) != n_bots:
            # one response per arm per ranking: a HIT that showed a bot twice has no such ranking
            skipped["that show a bot twice"].append(row)
            continue
        cid = rec["HITId"] if n_assignments.iloc[i] == 1 else f"{rec['HITId']}:{rec['AssignmentId']}"
        conversations.append(
            {
                "conversation_id": cid,
                "participant_id": rec["WorkerId"],
                "source": "human",
                "domain": domain,
                "in_domain": False,
                "gen_error": "error-message" in answer,
                "hit_id": rec["HITId"],
                "assignment_id": rec["AssignmentId"],
                "assignment_status": rec.get("AssignmentStatus"),
                "feedback": answer.get("feedback"),
                "file": str(path),
                "row": row,
            }
        )
        ratings = []
        for k, (arm, letter) in enumerate(zip(arms, letters(n_bots), strict=True)):
            sliders = _parse_sliders(_field(answer, f"score{k}", path, row), path, row, f"{_ANSWER}.score{k}")
            chat = _parse_dialogue(_field(answer, f"dialogue{k}", path, row), path, row, f"{_ANSWER}.dialogue{k}")
            preference = float(np.mean([100 - v if s in REVERSED_SLIDERS else v for s, v in sliders.items()]))
            ratings.append(preference)
            judgements.append(
                {
                    "conversation_id": cid,
                    "arm": arm,
                    "letter": letter,
                    "position": k + 1,
                    "rating_preference": preference,
                    "n_turns": sum(role == "user" for _, role, _ in chat),
                    **{f"score_{s}": v for s, v in sliders.items()},
                }
            )
            turns.extend(
                {"conversation_id": cid, "turn": t, "role": role, "arm": arm, "letter": letter, "text": text}
                for t, role, text in chat
            )
        # best first; a tie goes to the earlier position (stable sort on -rating)
        order = np.argsort(-np.asarray(ratings), kind="stable")
        ranks = np.empty(n_bots, dtype=int)
        ranks[order] = np.arange(1, n_bots + 1)
        for k in range(n_bots):
            judgements[-n_bots + k]["rank"] = int(ranks[k])
            # not a separate instrument: agreement analyses must not count rank vs rating as consistency
            judgements[-n_bots + k]["rank_derived"] = True
    for reason, skipped_rows in skipped.items():
        if skipped_rows:
            warnings.warn(f"{path}: skipped {len(skipped_rows)} row(s) {reason}: {skipped_rows}", stacklevel=3)
    return pd.DataFrame(judgements), pd.DataFrame(conversations), pd.DataFrame(turns)


def _parse_answer(raw: object, path: Path, row: int) -> dict[str, Any]:
    if not isinstance(raw, str) or not raw.strip():
        raise InputError("missing value", file=path, row=row, field=_ANSWER)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg} at char {exc.pos}", file=path, row=row, field=_ANSWER) from exc
    # MTurk wraps the form answers in a one-element list
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        raise InputError("expected a JSON list holding one object", file=path, row=row, field=_ANSWER)
    return value


def _count_bots(answer: dict[str, Any]) -> int:
    n = 0
    while any(f"{key}{n}" in answer for key in ("task", "score", "dialogue")):
        n += 1
    return n


def _field(answer: dict[str, Any], key: str, path: Path, row: int) -> str:
    value = answer.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError("missing or empty", file=path, row=row, field=f"{_ANSWER}.{key}")
    return value


def _parse_sliders(raw: str, path: Path, row: int, field: str) -> dict[str, float]:
    parts = [p for p in raw.strip().split("#") if p != ""]
    if len(parts) != len(SLIDERS):
        raise InputError(f"expected {len(SLIDERS)} '#'-separated scores, got {raw!r}", file=path, row=row, field=field)
    try:
        values = [float(p) for p in parts]
    except ValueError as exc:
        raise InputError(f"non-numeric score in {raw!r}", file=path, row=row, field=field) from exc
    if any(not 0 <= v <= 100 for v in values):
        raise InputError(f"score outside 0-100 in {raw!r}", file=path, row=row, field=field)
    return dict(zip(SLIDERS, values, strict=True))


def _parse_dialogue(raw: str, path: Path, row: int, field: str) -> list[tuple[int, str, str]]:
    """``u: hi###b: hello###`` -> [(turn, role, text)]; turn k = k-th user message."""
    out: list[tuple[int, str, str]] = []
    turn = -1
    for segment in raw.split("###"):
        if segment == "":
            continue
        prefix, text = segment[:2], segment[2:].strip()
        if prefix == "u:":
            turn += 1
            out.append((turn, "user", text))
        elif prefix == "b:":
            out.append((max(turn, 0), "assistant", text))
        else:
            raise InputError(f"a message must start with 'u:' or 'b:', got {segment[:40]!r}", file=path, row=row,
                             field=field)
    return out
