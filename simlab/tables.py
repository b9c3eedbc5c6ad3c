"""``Tables``: the record schema as pandas DataFrames, whatever they came from.

A run store (``simlab.load_run``), human data on disk (``simlab.fidelity.load_human``)
and the importers all produce a ``Tables``; the fidelity analyses and the report
consume one. Several sources can live in one ``Tables`` (column ``source``).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

import pandas as pd

__all__ = ["JUDGEMENT_COLUMNS", "TABLE_NAMES", "Tables", "concat", "formula_like", "spreadsheet_safe_frame"]

TABLE_NAMES = ("participants", "conversations", "turns", "judgements", "bdm", "autograde", "llm_calls", "arms",
               "answers")

JUDGEMENT_COLUMNS: tuple[str, ...] = (
    "conversation_id", "participant_id", "source", "domain", "arm", "letter", "position", "opening_choice",
    "provenance_guess", "rank", "provenance_rank", "rating_preference", "rating_engagingness",
    "rating_provenance", "wtp_bid",
)
"""The columns of ``Tables.judgements``, in this order: the stored judgement with its conversation's
participant_id, source and domain. A run store's ``load_run`` gives exactly these; human data
normalised by ``simlab.fidelity`` has them first (extra columns follow)."""


@dataclass(frozen=True)
class Tables:
    """The PROTOCOL §6 tables. Only ``judgements`` is required."""

    judgements: pd.DataFrame
    conversations: pd.DataFrame | None = None
    turns: pd.DataFrame | None = None
    participants: pd.DataFrame | None = None
    bdm: pd.DataFrame | None = None
    autograde: pd.DataFrame | None = None
    llm_calls: pd.DataFrame | None = None
    arms: pd.DataFrame | None = None
    """The arms in config order (arm, description, config_order), when the data say it."""
    answers: pd.DataFrame | None = None
    """Answers of instruments beyond the built-in ones, one row per (conversation, arm, turn,
    instrument): ``value`` as JSON text, ``number`` when it is one (``simlab.instruments``)."""

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        """(name, frame) for every table that is present."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    @property
    def sources(self) -> list[str]:
        for frame in (self.conversations, self.judgements):
            if frame is not None and "source" in frame.columns:
                return sorted(frame["source"].dropna().unique().tolist())
        return []

    def for_source(self, source: str) -> Tables:
        """The rows of one source (tables without a ``source`` column are joined via conversation_id)."""
        conv_ids = None
        if self.conversations is not None and "source" in self.conversations.columns:
            conv_ids = set(self.conversations.loc[self.conversations["source"] == source, "conversation_id"])
        out = {}
        for name, frame in self.items():
            if "source" in frame.columns:
                out[name] = frame[frame["source"] == source].reset_index(drop=True)
            elif conv_ids is not None and "conversation_id" in frame.columns:
                out[name] = frame[frame["conversation_id"].isin(conv_ids)].reset_index(drop=True)
            else:
                out[name] = frame
        return replace(self, **out)

    def write(self, out_dir: str | Path, fmt: Literal["csv", "jsonl", "parquet"] = "csv", *,
              spreadsheet_safe: bool = False) -> Path:
        """Write one file per table (``judgements.csv`` …): the on-disk form ``load_human`` reads.

        ``spreadsheet_safe`` (CSV only): text cells that a spreadsheet would run as a formula are
        written with a leading apostrophe (see ``spreadsheet_safe``)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, frame in self.items():
            path = out / f"{name}.{fmt}"
            if fmt == "csv":
                (spreadsheet_safe_frame(frame) if spreadsheet_safe else frame).to_csv(path, index=False)
            elif fmt == "jsonl":
                frame.to_json(path, orient="records", lines=True)
            else:
                frame.to_parquet(path, index=False)
        return out


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def formula_like(text: str) -> bool:
    """Whether a spreadsheet could run ``text`` as a formula: it starts with ``= + - @``, tab or CR,
    or with a character that Unicode compatibility normalisation (NFKC) turns into one of them,
    such as the fullwidth ``＝ ＋ － ＠`` and the small ``﹦ ﹢ ﹣ ﹫`` (spreadsheets normalise some input).

    >>> formula_like("＝HYPERLINK('http://x')"), formula_like("=1+1"), formula_like("fine = ok")
    (True, True, False)
    """
    if not text:
        return False
    first = text[0]
    if first in FORMULA_START:
        return True
    return first > "\x7f" and unicodedata.normalize("NFKC", first).startswith(FORMULA_START)


def spreadsheet_safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells that could run as a formula (``formula_like``) start with an apostrophe.

    Spreadsheets run such cells as formulas (CSV injection); model output and persona text can
    begin with anything. Numbers are untouched; only CSV exports use this (Parquet keeps text as is).
    """
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and formula_like(v) else v)
    return out


def concat(*parts: Tables) -> Tables:
    """Stack several ``Tables`` (e.g. a simulated run and human data) into one."""
    out: dict[str, pd.DataFrame | None] = {}
    for f in fields(Tables):
        frames = [getattr(p, f.name) for p in parts if getattr(p, f.name) is not None]
        out[f.name] = pd.concat(frames, ignore_index=True) if frames else None
    if out["arms"] is not None:  # one row per arm: the first part's description and order win
        out["arms"] = out["arms"].drop_duplicates("arm", keep="first").reset_index(drop=True)
    if out["judgements"] is None:
        raise ValueError("concat needs at least one Tables with judgements")
    return Tables(**out)
