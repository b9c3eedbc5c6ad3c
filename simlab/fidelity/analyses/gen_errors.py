"""Generation errors and how conversations ended, per source and arm (descriptive; PROTOCOL §2).

PROTOCOL keeps two flags per conversation: ``gen_error`` (some arm's generation still failed after
its retries, and the user saw an error notice in its place) and ``max_turns_reached`` (the context
budget ended the conversation); the turns table flags each failed reply (``gen_error``), and
``stop_reason`` says why a conversation ended. This table counts them, per source × arm: the
conversations the arm took part in, its replies, the share of its replies flagged, the share of
those conversations with one of its replies flagged, and the share of them with each conversation
flag; per source the same over all arms, and the count of each ``stop_reason``. Arms are in the
run's config order (``_prep.arm_order``).

No intervals: the table says what happened in these data, to read the other analyses by (they
drop or count flagged events). A flag a source's data do not record (the column is absent, or
empty for that source's rows: human data often have neither flag) is listed in ``missing`` and
its counts and shares are None, never 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import arm_order, flag
from simlab.fidelity.result import GenErrorsArm, GenErrorsResult, GenErrorsSource
from simlab.tables import Tables

__all__ = ["gen_errors"]

FLAGS = ("conversations.gen_error", "conversations.max_turns_reached", "conversations.stop_reason", "turns.gen_error")


def _share(n: int | None, of: int) -> float | None:
    return None if n is None or of == 0 else n / of


def _count(f: pd.Series | None) -> int | None:
    """Flagged rows, or None when the flag is recorded on none of them."""
    if f is None or not f.notna().any():
        return None
    return int((f == 1).sum())


def _conversations(tables: Tables) -> pd.DataFrame:
    """One row per conversation: conversation_id, source and the conversation flags (NaN = not recorded)."""
    c = tables.conversations
    j = tables.judgements
    if c is None or "conversation_id" not in c.columns or "source" not in c.columns:
        c = j[["conversation_id", "source"]] if "source" in j.columns else j[["conversation_id"]].assign(source="")
        c = c.drop_duplicates("conversation_id")
    out = pd.DataFrame({"conversation_id": c["conversation_id"].astype(str).to_numpy(),
                        "source": c["source"].astype(str).to_numpy()})
    for col in ("gen_error", "max_turns_reached"):
        out[col] = flag(c[col]).to_numpy() if col in c.columns else np.nan
    out["stop_reason"] = None
    if "stop_reason" in c.columns:
        reason = c["stop_reason"].astype("string").str.strip()
        out["stop_reason"] = reason.mask(reason == "").to_numpy(dtype=object, na_value=None)
    return out.drop_duplicates("conversation_id").reset_index(drop=True)


def _replies(tables: Tables, conv: pd.DataFrame) -> pd.DataFrame | None:
    """Assistant turns with conversation_id, source, arm and ``gen_error`` (NaN = not recorded)."""
    t = tables.turns
    if t is None or not {"conversation_id", "arm"} <= set(t.columns):
        return None
    a = t[(t["role"] == "assistant") if "role" in t.columns else t["arm"].notna()]
    a = a[a["arm"].notna()]
    out = pd.DataFrame({"conversation_id": a["conversation_id"].astype(str).to_numpy(),
                        "arm": a["arm"].astype(str).to_numpy(),
                        "gen_error": flag(a["gen_error"]).to_numpy() if "gen_error" in a.columns else np.nan})
    return out.merge(conv[["conversation_id", "source"]], on="conversation_id", how="inner")


def gen_errors(tables: Tables) -> GenErrorsResult:
    """Per source and arm: conversations, replies, shares flagged ``gen_error`` / ``max_turns_reached``,
    and per source the ``stop_reason`` counts; flags the data do not record are listed as missing."""
    conv = _conversations(tables)
    if conv.empty:
        return GenErrorsResult(status="not_available", reason="no conversations")
    replies = _replies(tables, conv)
    # which arms took part in which conversation: replies and judgements together
    j = tables.judgements
    pairs = [j[["conversation_id", "arm"]].dropna().astype(str)] if {"conversation_id", "arm"} <= set(j.columns) else []
    if replies is not None:
        pairs.append(replies[["conversation_id", "arm"]])
    took_part = (pd.concat(pairs, ignore_index=True).drop_duplicates() if pairs
                 else pd.DataFrame({"conversation_id": pd.Series(dtype=str), "arm": pd.Series(dtype=str)}))
    took_part = took_part.merge(conv, on="conversation_id", how="inner")
    arms = arm_order(tables, took_part["arm"].unique())
    out = GenErrorsResult(arms=arms)
    for s in sorted(conv["source"].unique()):
        c = conv[conv["source"] == s]
        r = replies[replies["source"] == s] if replies is not None else None
        missing = [name for name, col in (("conversations.gen_error", c["gen_error"]),
                                          ("conversations.max_turns_reached", c["max_turns_reached"]),
                                          ("conversations.stop_reason", c["stop_reason"]))
                   if not col.notna().any()]
        if r is None or r.empty:
            missing.append("turns (assistant replies)")
        elif not r["gen_error"].notna().any():
            missing.append("turns.gen_error")
        src = GenErrorsSource(missing=missing, **_counts(c, r))
        stops = c["stop_reason"].dropna()
        if len(stops):
            src.stop_reasons = {str(k): int(v) for k, v in stops.value_counts().sort_index().items()}
            src.n_stop_reason_missing = int(c["stop_reason"].isna().sum())
        tp = took_part[took_part["source"] == s]
        for arm in arms:
            ids = set(tp.loc[tp["arm"] == arm, "conversation_id"])
            if not ids:
                continue
            ra = r[r["arm"] == arm] if r is not None and not r.empty else None
            src.per_arm[arm] = GenErrorsArm(**_counts(c[c["conversation_id"].isin(ids)], ra, arm=True))
        out.per_source[s] = src
    return out


def _counts(c: pd.DataFrame, r: pd.DataFrame | None, *, arm: bool = False) -> dict[str, object]:
    """The counts and shares of one table cell: conversations ``c`` and their replies ``r``."""
    n_conv = len(c)
    n_gen = _count(c["gen_error"])
    n_max = _count(c["max_turns_reached"])
    n_replies = None if r is None else len(r)
    n_bad = None if r is None or r.empty else _count(r["gen_error"])
    out: dict[str, object] = {
        "n_conversations": n_conv,
        "n_replies": n_replies,
        "n_reply_gen_error": n_bad,
        "reply_gen_error_share": _share(n_bad, 0 if r is None else int(r["gen_error"].notna().sum())),
        "n_conversation_gen_error": n_gen,
        "conversation_gen_error_share": _share(n_gen, int(c["gen_error"].notna().sum())),
        "n_max_turns_reached": n_max,
        "max_turns_reached_share": _share(n_max, int(c["max_turns_reached"].notna().sum())),
    }
    if arm:
        n_own = None
        if n_bad is not None and r is not None:
            n_own = int(r.loc[r["gen_error"] == 1, "conversation_id"].nunique())
        out["n_conversation_arm_error"] = n_own
        out["arm_error_conversation_share"] = _share(n_own, n_conv)
    return out
