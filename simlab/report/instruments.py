"""The report's section on added instruments: their answers described per source and arm.

Instruments beyond the built-in ones (``simlab.instruments``) store their answers in the long
``answers`` table; the report shows each one descriptively, with no comparison or test: per
source and arm, how many answers, and their mean (numbers), the share answering yes (booleans)
or the most common answer and its share (anything else).

>>> import pandas as pd
>>> answers = pd.DataFrame({"conversation_id": ["c1", "c1"], "arm": ["GEN", "PROMPT"], "letter": ["A", "B"],
...                         "turn": [None, None], "instrument": ["use_again", "use_again"],
...                         "value": ["true", "false"], "number": [1.0, 0.0], "source": ["sim_dynamic"] * 2})
>>> [(r["arm"], r["summary"]) for r in answer_summaries(answers)[0]["rows"]]
[('GEN', 'yes 100%'), ('PROMPT', 'yes 0%')]
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from simlab.tables import Tables

__all__ = ["answer_summaries", "instrument_sections"]


def _summary(group: pd.DataFrame) -> str:
    numbers = group["number"]
    values = group["value"].astype(str)
    if numbers.notna().all() and len(numbers):
        if set(values) <= {"true", "false"}:
            return f"yes {float(numbers.mean()):.0%}"
        return f"mean {float(numbers.mean()):.3g}"
    counts = values.value_counts()
    top = str(counts.index[0])
    return f"most often {top} ({counts.iloc[0] / len(values):.0%})"


def answer_summaries(answers: pd.DataFrame) -> list[dict[str, Any]]:
    """Per instrument (in order of first appearance): rows of source, arm, n and a summary."""
    if answers.empty:
        return []
    frame = answers.copy()
    if "source" not in frame.columns:
        frame["source"] = ""
    frame["source"] = frame["source"].fillna("").astype(str)
    out = []
    for name in dict.fromkeys(frame["instrument"].astype(str)):
        part = frame[frame["instrument"].astype(str) == name]
        turns = part["turn"].notna().any() if "turn" in part.columns else False
        rows = [{"source": source, "arm": str(arm), "n": len(group), "summary": _summary(group)}
                for (source, arm), group in part.groupby(["source", "arm"], sort=True)]
        out.append({"instrument": name, "scope": "each turn" if turns else "end of conversation", "rows": rows})
    return out


def instrument_sections(tables: Tables | None) -> list[dict[str, Any]]:
    """``answer_summaries`` of the tables' ``answers``, each answer with its conversation's source."""
    if tables is None or tables.answers is None or tables.answers.empty:
        return []
    answers = tables.answers
    if "source" not in answers.columns and tables.conversations is not None \
            and "source" in tables.conversations.columns:
        answers = answers.merge(tables.conversations[["conversation_id", "source"]].drop_duplicates("conversation_id"),
                                on="conversation_id", how="left")
    return answer_summaries(answers)
