"""Render a ``FidelityResult`` (plus run metadata and tables) to one self-contained HTML file.

Everything untrusted (persona-derived text, model replies, human data, even run metadata)
goes through Jinja2 autoescaping; the only markup marked safe is the SVG that
``simlab.report.charts`` made. A strict Content-Security-Policy forbids every script, so
even a missed escape could not run one. Strings shaped like an API key are redacted (simlab.redaction).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
from markupsafe import Markup

from simlab.fidelity.leaderboard_result import Leaderboard
from simlab.fidelity.result import FidelityResult
from simlab.redaction import redact_key_shapes
from simlab.report.instruments import instrument_sections
from simlab.report.leaderboard import leaderboard_context
from simlab.report.sections import build_sections
from simlab.report.subgroups import weights_section
from simlab.report.templating import environment
from simlab.tables import Tables

__all__ = ["render_html", "scrub", "write_html"]

MAX_TEXT = 2000  # characters shown per turn in the transcript browser
PER_DOMAIN = 2  # conversations per domain in the transcript browser


def scrub(text: str) -> str:
    """Replace anything shaped like an API key (``sk-…``) by ``simlab.redaction.REDACTED``."""
    return redact_key_shapes(text)


# ------------------------------------------------------------------------------ header


def _safe_url(url: str | None) -> str:
    """An endpoint URL without userinfo or query (where tokens hide)."""
    if not url:
        return ""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _model_row(role: str, spec: Mapping[str, Any], endpoints: Mapping[str, Any]) -> dict[str, str]:
    ep_name = str(spec.get("endpoint", ""))
    ep = endpoints.get(ep_name) or {}
    sampling = spec.get("sampling") or {}
    detail = [f"{k}={sampling[k]}" for k in ("temperature", "top_p", "max_tokens") if sampling.get(k) is not None]
    extra = spec.get("personalisation") or spec.get("rendering") or ""
    if spec.get("memory"):  # the simulator: which of its own answers it saw again
        extra = f"{extra}, memory: {spec['memory']}"
    return {
        "role": role,
        "model": str(spec.get("model", "")),
        "endpoint": f"{ep_name} ({ep.get('kind', '?')}) {_safe_url(ep.get('base_url'))}".strip(),
        "sampling": ", ".join(detail),
        "setting": str(extra),
        "description": str(spec.get("description") or spec.get("system_prompt") or ""),
    }


def _tokens(meta: Mapping[str, Any], tables: Tables | None) -> list[dict[str, Any]]:
    counts = meta.get("counts") or {}
    rows = counts.get("by_role_arm")
    if rows is None and tables is not None and tables.llm_calls is not None and len(tables.llm_calls):
        calls = tables.llm_calls.assign(arm=tables.llm_calls["arm"].astype(object).where(tables.llm_calls["arm"].notna(), None),
                                        err=tables.llm_calls["status"] != "ok")
        rows = [
            {"role": role, "arm": arm, "calls": len(g), "errors": int(g["err"].sum()),
             "prompt_tokens": int(g["prompt_tokens"].sum()), "completion_tokens": int(g["completion_tokens"].sum()),
             **({"cost_usd": float(g["cost_usd"].sum()), "uncosted": int(g["cost_usd"].isna().sum())}
                if "cost_usd" in g else {})}
            for (role, arm), g in calls.groupby(["role", "arm"], dropna=False)
        ]
    return [dict(r, arm=r.get("arm") or "–", cost=_usd(r)) for r in rows or []]


def _usd(row: Mapping[str, Any]) -> str:
    """A row's dollars; "–" when none of its calls has a cost (stored before costs were kept)."""
    if row.get("cost_usd") is None or row.get("uncosted", 0) >= row.get("calls", 0):
        return "–"
    return f"{float(row['cost_usd']):.4f}"


def _costs(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The study's dollars: stored calls, spent (with sessions a stop cut short), per session, unpriced models."""
    counts = meta.get("counts") or {}
    if "cost_usd" not in counts:
        return {}
    per_session = counts.get("session_cost_usd")
    budget = (meta.get("config") or {}).get("budget_usd")
    return {"study": f"{float(counts['cost_usd']):.4f}",
            "spent": f"{float(meta.get('spend_usd') or counts['cost_usd']):.4f}",
            "per_session": None if not per_session else (f"{float(per_session[0]):.4f}", f"{float(per_session[1]):.4f}"),
            "budget": None if budget is None else f"{float(budget):.4f}",
            "unpriced": sorted((counts.get("unpriced") or {}).items()),
            "uncosted": int(counts.get("uncosted_calls") or 0)}


def _counts(tables: Tables | None, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per source: participants, conversations, judgements, error rates."""
    if tables is None:
        return []
    conv = tables.conversations
    out = []
    for src in tables.sources:
        j = tables.judgements[tables.judgements["source"] == src] if "source" in tables.judgements else tables.judgements
        c = conv[conv["source"] == src] if conv is not None and "source" in conv else None
        row: dict[str, Any] = {
            "source": src,
            "participants": int(j["participant_id"].nunique()) if "participant_id" in j else "–",
            "conversations": int(len(c)) if c is not None else int(j["conversation_id"].nunique()),
            "judgements": int(len(j)),
            "gen_error": "–",
            "max_turns_reached": "–",
        }
        for flag in ("gen_error", "max_turns_reached"):
            if c is not None and flag in c and len(c) and c[flag].notna().any():
                share = float(c[flag].astype("float").mean())
                row[flag] = f"{100 * share:.1f}% ({int(c[flag].astype('float').sum())})"
        out.append(row)
    return out


def _gen_errors_by_arm(tables: Tables | None, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per source and arm: the share of replies that are error notices, against the run's threshold."""
    t = tables.turns if tables is not None else None
    if t is None or "gen_error" not in t or "arm" not in t or not (t["role"] == "assistant").any():
        return []
    limit = (meta.get("config") or {}).get("max_gen_error_rate")
    replies = t[(t["role"] == "assistant") & t["arm"].notna()]
    if "source" not in replies and tables is not None and tables.conversations is not None:
        replies = replies.merge(tables.conversations[["conversation_id", "source"]], on="conversation_id", how="left")
    out = []
    for (src, arm), g in replies.groupby([replies.get("source", pd.Series("", index=replies.index)), "arm"], sort=True):
        errors, n = int(g["gen_error"].fillna(False).astype(bool).sum()), len(g)
        out.append({"source": str(src), "arm": str(arm), "errors": errors, "replies": n,
                    "share": f"{100 * errors / n:.1f}%",
                    "over": limit is not None and errors / n > float(limit)})
    return out if any(r["errors"] for r in out) else []


def build_header(meta: Mapping[str, Any] | None, tables: Tables | None, result: FidelityResult) -> dict[str, Any]:
    """Run id, date, models and endpoints per arm, simulator/judge, prompt hashes, seeds, counts, tokens."""
    meta = dict(meta or {})
    config = meta.get("config") or {}
    endpoints = config.get("endpoints") or {}
    models = [_model_row(str(a.get("id", "arm")), a, endpoints) for a in config.get("arms") or []]
    for role in ("simulator", "judge", "summary"):
        if isinstance(config.get(role), Mapping):
            models.append(_model_row(role, config[role], endpoints))
    if not models and isinstance(meta.get("models"), Mapping):
        models = [{"role": k, "model": str(v), "endpoint": "", "sampling": "", "setting": "", "description": ""}
                  for k, v in meta["models"].items()]
    counts = meta.get("counts") or {}
    seeds = {"run seed": meta.get("seed", config.get("seed")), "bootstrap seed": result.seed,
             "bootstrap draws": result.n_boot}
    return {
        "run_id": str(meta.get("run_id") or config.get("name") or "fidelity comparison"),
        "created_at": str(meta.get("created_at") or ""),
        "generated_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "simlab_version": str(meta.get("simlab_version") or ""),
        "command": str(meta.get("command") or ""),
        "human": str(meta.get("human") or config.get("human") or ""),
        "sources": result.sources,
        "models": models,
        "prompt_hashes": sorted((meta.get("prompt_hashes") or {}).items()),
        "seeds": [(k, v) for k, v in seeds.items() if v is not None],
        "sessions": {k: counts[k] for k in ("sessions_completed", "sessions_failed") if k in counts},
        "failure_groups": [g for g in counts.get("failure_groups") or [] if isinstance(g, Mapping)],
        "backends": [(name, info) for name, info in (meta.get("backends") or {}).items() if isinstance(info, Mapping)],
        "restarts": [r for r in meta.get("restarts") or [] if isinstance(r, Mapping)],
        "counts": _counts(tables, meta),
        "gen_errors": _gen_errors_by_arm(tables, meta),
        "max_gen_error_rate": (meta.get("config") or {}).get("max_gen_error_rate"),
        "tokens": _tokens(meta, tables),
        "costs": _costs(meta),
        "note": str(meta.get("note") or ""),
        "leaderboard_note": str(meta.get("leaderboard_note") or ""),
    }


# ------------------------------------------------------------------------------ transcripts


def _clip(value: Any) -> str:
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " … [truncated]"


def _conversation(cid: str, conv: pd.DataFrame | None, turns: pd.DataFrame | None, judg: pd.DataFrame) -> dict[str, Any]:
    """One conversation as turns (user message + the arms' replies) and its judgements."""
    meta_row = conv[conv["conversation_id"] == cid].iloc[0] if conv is not None and (conv["conversation_id"] == cid).any() else None
    out: dict[str, Any] = {"conversation_id": cid, "turns": [], "judgements": [], "flags": []}
    if meta_row is not None:
        out["source"] = str(meta_row.get("source", ""))
        out["flags"] = [f for f in ("gen_error", "max_turns_reached") if f in meta_row and meta_row[f] is True]
        if "stop_reason" in meta_row and isinstance(meta_row["stop_reason"], str):
            out["flags"].append(f"stop: {meta_row['stop_reason']}")
    if turns is not None:
        t = turns[turns["conversation_id"] == cid]
        for turn, g in t.groupby("turn", sort=True):
            user = g[g["role"] == "user"]["text"]
            replies = g[g["role"] == "assistant"]
            if "letter" in replies:
                replies = replies.sort_values("letter", na_position="last")
            out["turns"].append({
                "turn": int(turn) + 1,
                "user": _clip(user.iloc[0]) if len(user) else "",
                "replies": [{
                    "letter": str(r.get("letter") if pd.notna(r.get("letter")) else ""),
                    "arm": str(r.get("arm") if pd.notna(r.get("arm")) else ""),
                    "rating": "" if pd.isna(r.get("turn_rating")) else f"{float(r['turn_rating']):.0f}",
                    "text": _clip(r["text"]),
                } for _, r in replies.iterrows()],
            })
    j = judg[judg["conversation_id"] == cid]
    if "rank" in j:
        j = j.sort_values("rank", na_position="last")
    for _, r in j.iterrows():
        out["judgements"].append({
            "letter": str(r.get("letter") if pd.notna(r.get("letter")) else ""),
            "arm": str(r["arm"]),
            "rank": "" if pd.isna(r.get("rank")) else str(int(r["rank"])),
            "rating_preference": "" if pd.isna(r.get("rating_preference")) else f"{float(r['rating_preference']):.0f}",
            "wtp_bid": "" if pd.isna(r.get("wtp_bid")) else f"${float(r['wtp_bid']):.2f}",
        })
    return out


def build_transcripts(tables: Tables | None, per_domain: int = PER_DOMAIN) -> list[dict[str, Any]]:
    """A few conversations per domain; a participant's human and simulated ones side by side.

    Participants present in several sources are shown first, so the columns can be compared.
    """
    if tables is None or tables.conversations is None:
        return []
    conv = tables.conversations
    if not {"conversation_id", "participant_id", "source", "domain"} <= set(conv.columns):
        return []
    sources = sorted(conv["source"].dropna().unique(), key=lambda s: (s != "human", s))
    out = []
    for domain in sorted(conv["domain"].dropna().unique()):
        d = conv[conv["domain"] == domain]
        n_src = d.groupby("participant_id")["source"].nunique().sort_values(ascending=False, kind="stable")
        picked = list(n_src.index[:per_domain])
        groups = []
        for pid in picked:
            cols = []
            for src in sources:
                ids = d[(d["participant_id"] == pid) & (d["source"] == src)]["conversation_id"]
                if len(ids):
                    cols.append(dict(_conversation(str(ids.iloc[0]), conv, tables.turns, tables.judgements), source=src))
            groups.append({"participant_id": str(pid), "columns": cols})
        out.append({"domain": str(domain), "groups": groups})
    return out


# ------------------------------------------------------------------------------ entry points


def render_html(result: FidelityResult, *, meta: Mapping[str, Any] | None = None, tables: Tables | None = None,
                leaderboard: Leaderboard | None = None) -> str:
    """The report as an HTML string; ``leaderboard`` (a run with several simulator variants) adds the
    leaderboard of its sources as the first section."""
    turns = None
    if tables is not None and tables.turns is not None and tables.conversations is not None:
        turns = tables.turns.merge(tables.conversations[["conversation_id", "source"]], on="conversation_id", how="left") \
            if "source" not in tables.turns.columns else tables.turns
    sections = build_sections(result, turns)
    if result.weights is not None:
        sections.insert(0, weights_section(result))
    for s in sections:
        s.charts = [Markup(c) for c in s.charts]  # made by matplotlib from escaped text: safe to inline
    template = environment().get_template("report.html.j2")
    return template.render(header=build_header(meta, tables, result), sections=sections,
                           transcripts=build_transcripts(tables), instruments=instrument_sections(tables),
                           lb=leaderboard_context(leaderboard) if leaderboard is not None else None)


def write_html(result: FidelityResult, path: str | os.PathLike[str], *, meta: dict[str, Any] | None = None,
               tables: Tables | None = None, leaderboard: Leaderboard | None = None) -> Path:
    """Write the report to ``path`` atomically (a reader never sees half a file); returns the path."""
    from simlab._files import write_text_atomic

    return write_text_atomic(path, render_html(result, meta=meta, tables=tables, leaderboard=leaderboard))
