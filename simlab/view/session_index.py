"""One row per session of a run (completed or failed) in an in-memory SQLite table, and the
sessions table's filters, sort and pages as SQL over it.

The run's store is opened read-only; the summary is rebuilt when the store file or its
write-ahead log changes (a run in progress), so every query reads what the run has written.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from simlab.view.core import RunHandle, ViewState

__all__ = [
    "FILTERS",
    "PAGE_SIZE",
    "SORTS",
    "Page",
    "SessionFilter",
    "SessionIndex",
    "SessionRow",
    "calls_by_endpoint",
    "index_of",
    "parse_filter",
    "read_meta",
]

PAGE_SIZE = 50
"""Sessions per page of the table."""

SORTS: dict[str, str] = {
    "conversation": "conversation_id",
    "participant": "participant_id",
    "source": "source",
    "domain": "domain",
    "chosen": "chosen_arm",
    "status": "status",
    "stop_reason": "stop_reason",
    "n_turns": "n_turns",
    "rating": "rating",
    "gen_error": "gen_error",
}
"""Sortable columns: the URL's ``sort`` value → the summary's column."""

FILTERS = ("source", "domain", "arm", "participant", "status", "gen_error", "stop_reason", "n_turns",
           "rating_min", "rating_max", "first_shown_chosen")
"""The query parameters that filter the table (each optional; the text ones may repeat)."""

_SUMMARY = """
CREATE TABLE v.summary AS
WITH j AS (
  SELECT conversation_id,
         max(CASE WHEN opening_choice = 1 THEN arm END) AS chosen_arm,
         max(CASE WHEN opening_choice = 1 THEN letter END) AS chosen_letter,
         max(CASE WHEN opening_choice = 1 THEN rating_preference END) AS rating,
         max(CASE WHEN position = 1 THEN arm END) AS first_arm,
         max(CASE WHEN rank = 1 THEN arm END) AS best_arm
  FROM judgements GROUP BY conversation_id)
SELECT c.conversation_id, c.participant_id, c.source, c.domain, 'completed' AS status, c.stop_reason,
       c.n_turns, c.gen_error, j.chosen_arm, j.chosen_letter, j.rating, j.first_arm, j.best_arm,
       CASE WHEN j.chosen_arm IS NULL OR j.first_arm IS NULL THEN NULL
            WHEN j.chosen_arm = j.first_arm THEN 1 ELSE 0 END AS first_shown_chosen,
       NULL AS error_type, NULL AS reason
FROM conversations c LEFT JOIN j USING (conversation_id)
"""

# A session that failed and was not completed since: its latest failure (as ``store_counts`` counts them).
# Its source is its participant's, or the run's when the run has one (a participant none of whose
# sessions completed has no participants row).
_FAILED = """
INSERT INTO v.summary
SELECT f.conversation_id, f.participant_id,
       coalesce((SELECT min(p.source) FROM participants p WHERE p.participant_id = f.participant_id),
                (SELECT CASE WHEN count(DISTINCT source) = 1 THEN min(source) END FROM participants)),
       f.domain, 'failed', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, f.error_type, f.reason
FROM failures f
WHERE f.failure_id IN (SELECT max(failure_id) FROM failures
                       WHERE conversation_id NOT IN (SELECT conversation_id FROM conversations)
                       GROUP BY conversation_id)
"""

_INDEXES = ("domain", "source", "status", "participant_id", "chosen_arm", "rating", "n_turns")


def _has(conn: sqlite3.Connection, name: str) -> bool:
    # a table of the store, or a view an older store is read through (temp schema)
    sql = "SELECT 1 FROM {} WHERE name = ? AND type IN ('table', 'view')"
    return any(conn.execute(sql.format(m), (name,)).fetchone() for m in ("sqlite_master", "sqlite_temp_master"))


@dataclass(frozen=True)
class SessionFilter:
    """The sessions table's state as given in its URL: filters, sort column and order, page."""

    source: tuple[str, ...] = ()
    domain: tuple[str, ...] = ()
    arm: tuple[str, ...] = ()
    """The arm chosen at the opening (``opening_choice``)."""
    participant: tuple[str, ...] = ()
    status: Literal["completed", "failed"] | None = None
    gen_error: bool | None = None
    stop_reason: tuple[str, ...] = ()
    n_turns: tuple[int, ...] = ()
    rating_min: float | None = None
    """Lowest preference rating (0–100) of the chosen arm."""
    rating_max: float | None = None
    first_shown_chosen: bool | None = None
    """Whether the arm shown first (position 1, letter A when letters follow the order) was chosen."""
    sort: str = "conversation"
    order: Literal["asc", "desc"] = "asc"
    page: int = 1

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition (over the summary) and its parameters."""
        parts: list[str] = []
        params: list[Any] = []
        for key, column in (("source", "source"), ("domain", "domain"), ("arm", "chosen_arm"),
                            ("participant", "participant_id"), ("stop_reason", "stop_reason"), ("n_turns", "n_turns")):
            values = getattr(self, key)
            if values:
                parts.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
        for key, column in (("status", "status"), ("gen_error", "gen_error"), ("first_shown_chosen", "first_shown_chosen")):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{column} = ?")
                params.append(int(value) if isinstance(value, bool) else value)
        if self.rating_min is not None:
            parts.append("rating >= ?")
            params.append(self.rating_min)
        if self.rating_max is not None:
            parts.append("rating <= ?")
            params.append(self.rating_max)
        return (" AND ".join(parts) or "1"), params

    def active(self) -> list[tuple[str, str]]:
        """The filters in effect as (parameter, value) pairs, in URL order."""
        out: list[tuple[str, str]] = []
        for key in FILTERS:
            value = getattr(self, key)
            if isinstance(value, tuple):
                out.extend((key, str(v)) for v in value)
            elif value is not None:
                out.append((key, str(int(value)) if isinstance(value, bool) else _number(value)))
        return out


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_filter(query: Mapping[str, str] | Any) -> SessionFilter:
    """A ``SessionFilter`` from a URL's query (a multidict: ``getall`` gives repeated keys). Empty
    values are absent (a GET form sends its empty fields). Bad values raise ``ValueError`` naming
    the parameter, the value and what it may be."""

    def many(key: str) -> tuple[str, ...]:
        values = query.getall(key, []) if hasattr(query, "getall") else ([query[key]] if key in query else [])
        return tuple(v for v in (str(x).strip() for x in values) if v)

    def one(key: str) -> str | None:
        values = many(key)
        if len(values) > 1:
            raise ValueError(f"{key}: give one value, not {len(values)}")
        return values[0] if values else None

    def flag(key: str) -> bool | None:
        value = one(key)
        if value is None:
            return None
        if value not in ("0", "1"):
            raise ValueError(f"{key}={value!r}: use 0 or 1")
        return value == "1"

    def number(key: str) -> float | None:
        value = one(key)
        if value is None:
            return None
        try:
            x = float(value)
        except ValueError:
            raise ValueError(f"{key}={value!r}: not a number (a rating from 0 to 100)") from None
        if not math.isfinite(x):
            raise ValueError(f"{key}={value!r}: not a finite number (a rating from 0 to 100)")
        return x

    status = one("status")
    if status not in (None, "completed", "failed"):
        raise ValueError(f"status={status!r}: use completed or failed")
    turns: list[int] = []
    for value in many("n_turns"):
        if not value.isdigit():
            raise ValueError(f"n_turns={value!r}: not a whole number of turns")
        turns.append(int(value))
    sort = one("sort") or "conversation"
    if sort not in SORTS:
        raise ValueError(f"sort={sort!r}: sort by one of {', '.join(SORTS)}")
    order = one("order") or "asc"
    if order not in ("asc", "desc"):
        raise ValueError(f"order={order!r}: use asc or desc")
    page_text = one("page") or "1"
    if not page_text.isdigit() or int(page_text) < 1:
        raise ValueError(f"page={page_text!r}: pages are numbered from 1")
    return SessionFilter(
        source=many("source"), domain=many("domain"), arm=many("arm"), participant=many("participant"),
        status=status,  # type: ignore[arg-type]  # checked above
        gen_error=flag("gen_error"), stop_reason=many("stop_reason"), n_turns=tuple(turns),
        rating_min=number("rating_min"), rating_max=number("rating_max"), first_shown_chosen=flag("first_shown_chosen"),
        sort=sort, order=order,  # type: ignore[arg-type]  # checked above
        page=int(page_text),
    )


@dataclass(frozen=True)
class SessionRow:
    """One row of the sessions table."""

    conversation_id: str
    participant_id: str
    source: str | None
    domain: str
    status: str
    stop_reason: str | None
    n_turns: int | None
    gen_error: bool | None
    chosen_arm: str | None
    chosen_letter: str | None
    rating: float | None
    first_arm: str | None
    best_arm: str | None
    first_shown_chosen: bool | None
    error_type: str | None
    reason: str | None
    arms: list[dict[str, Any]] = field(default_factory=list)
    """Each arm of the session in display order: arm, letter, position, rating_preference, chosen, rank."""


@dataclass(frozen=True)
class Page:
    """One page of the filtered, sorted table."""

    rows: list[SessionRow]
    total: int
    """Sessions that pass the filter (all pages)."""
    page: int
    pages: int


_ROW_COLUMNS = ("conversation_id", "participant_id", "source", "domain", "status", "stop_reason", "n_turns", "gen_error",
                "chosen_arm", "chosen_letter", "rating", "first_arm", "best_arm", "first_shown_chosen", "error_type",
                "reason")


class SessionIndex:
    """The summary of one run's sessions, built once from its read-only connection ``conn`` (which
    it keeps, and closes in ``close``).

    >>> import sqlite3
    >>> from simlab.store.schema import DDL
    >>> conn = sqlite3.connect(":memory:")
    >>> for statement in DDL:
    ...     _ = conn.execute(statement)
    >>> index = SessionIndex(conn)
    >>> index.page(parse_filter({"status": "completed", "sort": "rating"})).total
    0
    >>> index.close()
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._choices: dict[str, list[str]] | None = None
        conn.execute("ATTACH DATABASE ':memory:' AS v")
        if _has(conn, "conversations") and _has(conn, "judgements"):
            conn.execute(_SUMMARY)
        else:  # not a run store's tables: an empty table, the page says there are no sessions
            conn.execute("CREATE TABLE v.summary (" + ", ".join(_ROW_COLUMNS) + ")")
        if _has(conn, "failures") and _has(conn, "participants"):
            conn.execute(_FAILED)
        for column in _INDEXES:
            conn.execute(f"CREATE INDEX v.summary_{column} ON summary ({column})")

    def close(self) -> None:
        """Close the connection (the summary goes with it)."""
        self._conn.close()

    def choices(self) -> dict[str, list[str]]:
        """The values each select of the filter form offers: those present in the run (a copy: the
        summary does not change, so they are read once)."""
        if self._choices is None:
            self._choices = self._read_choices()
        return {k: list(v) for k, v in self._choices.items()}

    def _read_choices(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, column in (("source", "source"), ("domain", "domain"), ("arm", "chosen_arm"),
                            ("stop_reason", "stop_reason"), ("n_turns", "n_turns")):
            rows = self._conn.execute(f"SELECT DISTINCT {column} FROM v.summary WHERE {column} IS NOT NULL ORDER BY 1")
            out[key] = [str(r[0]) for r in rows]
        return out

    def counts(self) -> list[tuple[str, str, str, int]]:
        """(status, source, domain, sessions), every combination present."""
        return [(str(r[0]), "" if r[1] is None else str(r[1]), str(r[2]), int(r[3])) for r in self._conn.execute(
            "SELECT status, source, domain, count(*) FROM v.summary GROUP BY status, source, domain ORDER BY 1, 2, 3")]

    def created_at(self) -> str:
        """When the run was made (its ``meta``), or "" when it does not say."""
        if not _has(self._conn, "meta"):
            return ""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
        try:
            value = json.loads(row[0]) if row else ""
        except (TypeError, ValueError):
            return ""
        return value if isinstance(value, str) else ""

    def page(self, f: SessionFilter, size: int = PAGE_SIZE) -> Page:
        """The page ``f.page`` of the sessions that pass ``f``, sorted by ``f.sort`` (ties: conversation id)."""
        where, params = f.where()
        total = int(self._conn.execute(f"SELECT count(*) FROM v.summary WHERE {where}", params).fetchone()[0])
        pages = max(1, math.ceil(total / size))
        page = min(f.page, pages)
        column = SORTS[f.sort]
        direction = "DESC" if f.order == "desc" else "ASC"
        # empty values last in either direction, so a sort shows the sessions that have the value first
        rows = self._conn.execute(
            f"SELECT {', '.join(_ROW_COLUMNS)} FROM v.summary WHERE {where}"
            f" ORDER BY {column} IS NULL, {column} {direction}, conversation_id {direction} LIMIT ? OFFSET ?",
            [*params, size, (page - 1) * size]).fetchall()
        arms = self._arms([r[0] for r in rows])
        out = []
        for r in rows:
            d = dict(zip(_ROW_COLUMNS, r, strict=True))
            for key in ("gen_error", "first_shown_chosen"):
                d[key] = None if d[key] is None else bool(d[key])
            out.append(SessionRow(**d, arms=arms.get(str(r[0]), [])))
        return Page(rows=out, total=total, page=page, pages=pages)

    def _arms(self, ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        if not ids:
            return out
        rows = self._conn.execute(
            "SELECT conversation_id, arm, letter, position, rating_preference, opening_choice, rank FROM judgements"
            f" WHERE conversation_id IN ({', '.join('?' * len(ids))}) ORDER BY conversation_id, position", list(ids))
        for cid, arm, letter, position, rating, chosen, rank in rows:
            out.setdefault(str(cid), []).append({"arm": arm, "letter": letter, "position": position, "rating": rating,
                                                 "chosen": bool(chosen), "rank": rank})
        return out


def calls_by_endpoint(conn: sqlite3.Connection) -> list[tuple[str, str, str, int, int]]:
    """(endpoint, model, served model, calls, errors) of the stored model calls of the store on ``conn``."""
    if not _has(conn, "llm_calls"):
        return []
    return [(str(r[0]), str(r[1]), "" if r[2] is None else str(r[2]), int(r[3]), int(r[4] or 0))
            for r in conn.execute(
                "SELECT endpoint, model, served_model, count(*), sum(status != 'ok') FROM llm_calls"
                " GROUP BY endpoint, model, served_model ORDER BY endpoint, model, served_model")]


def read_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    """The ``meta`` table of the store on ``conn``, each value decoded from JSON (kept as text where
    it is not JSON: the page shows a damaged value rather than failing)."""
    out: dict[str, Any] = {}
    if not _has(conn, "meta"):
        return out
    for key, value in conn.execute("SELECT key, value FROM meta ORDER BY key"):
        try:
            out[str(key)] = json.loads(value)
        except (TypeError, ValueError):
            out[str(key)] = value
    return out


def index_of(state: ViewState, handle: RunHandle) -> SessionIndex:
    """The summary of ``handle``'s run, rebuilt when its store changed since it was built (one per run,
    kept in ``state.extra``)."""
    cache: dict[str, tuple[object, SessionIndex]] = state.extra.setdefault("session_index", {})
    version = handle.version()
    held = cache.get(handle.run_id)
    if held is not None and held[0] == version:
        return held[1]
    index = SessionIndex(handle.connect())
    if held is not None:
        held[1].close()
    cache[handle.run_id] = (version, index)
    return index
