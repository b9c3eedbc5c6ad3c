"""A content-addressed cache of model replies, shared across runs and processes (``--cache PATH``).

A reply is stored under the SHA-256 of everything that decides it: the endpoint's kind and the model
its server loads (a launch table's), the served model name, the whole request body (messages,
sampling, seed, stop, the structured-output schema, a soft-token prompt's embeddings) and the hash
of the template that made the prompt. A change to any of them is another key, so a miss. A request
with no seed is sampled afresh each time and is never cached unless ``unseeded=True``.

The file is SQLite in WAL mode: any number of processes read and write it at once (each write is
one ``INSERT OR IGNORE`` of a key and its reply; the first reply stored for a key is the one every
later lookup gets). A row holds its key's full request digest and is only ever returned for it.

Example:
    >>> import tempfile, os
    >>> cache = ResponseCache(os.path.join(tempfile.mkdtemp(), "replies.sqlite"))
    >>> key = cache.key({"model": "m", "messages": [], "seed": 1}, endpoint_identity={"kind": "vllm"})
    >>> cache.get(key) is None
    True
    >>> cache.put(key, Reply("hi", "stop", "m", 3, 1)); cache.get(key).text
    'hi'
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simlab.errors import ConfigError
from simlab.llm.transport import Reply

__all__ = ["CACHE_KIND", "ResponseCache", "check_cache_path"]

CACHE_KIND = "simlab-response-cache/1"
"""What the cache file's ``cache_meta`` table says it is (another file at the path is refused)."""

_DDL = (
    "CREATE TABLE IF NOT EXISTS cache_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL) WITHOUT ROWID",
)


def check_cache_path(path: str | Path, field: str = "cache") -> Path:
    """``path`` if a cache can live there: a cache file, or nothing yet in a writable folder. Anything
    else (a folder, another kind of file, a place that cannot be written) is a ``ConfigError`` naming
    the file and ``field``."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError("is a folder, not a response cache file", file=p, field=field)
    if p.exists():
        if not os.access(p, os.R_OK | os.W_OK):
            raise ConfigError("the response cache file cannot be read and written", file=p, field=field)
        with p.open("rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise ConfigError("holds another kind of file, not a simlab response cache", file=p, field=field)
        if head:
            try:
                conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=30)
                try:
                    row = conn.execute("SELECT value FROM cache_meta WHERE key = 'kind'").fetchone()
                finally:
                    conn.close()
            except sqlite3.DatabaseError:
                row = None
            if row is None or row[0] != CACHE_KIND:
                raise ConfigError("is an SQLite file but not a simlab response cache", file=p, field=field)
        return p
    folder = next((q for q in p.parents if q.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot make the response cache here ({folder} is not a writable folder)", file=p,
                          field=field)
    return p


class ResponseCache:
    """Replies by the digest of the request that got them (see the module's note)."""

    def __init__(self, path: str | Path, *, unseeded: bool = False) -> None:
        self.path = check_cache_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.unseeded = unseeded
        """Also cache requests with no seed (a reply sampled once stands for every later one)."""
        self.hits = 0
        self.misses = 0
        self.saved_usd = 0.0
        """What the replies served from the cache cost when they were first made, at today's prices."""
        self._local = threading.local()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _DDL:
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO cache_meta VALUES ('kind', ?)", (CACHE_KIND,))
            kind = conn.execute("SELECT value FROM cache_meta WHERE key = 'kind'").fetchone()[0]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if kind != CACHE_KIND:
            raise ConfigError(f"is a response cache of another kind ({kind})", file=self.path, field="cache")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=60, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # a reply lost in a power cut is asked again
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def cacheable(self, body: Mapping[str, Any]) -> bool:
        """Whether a request may be served from (and stored in) the cache: seeded, or ``unseeded``."""
        return self.unseeded or body.get("seed") is not None

    @staticmethod
    def key(body: Mapping[str, Any], *, endpoint_identity: Mapping[str, Any], prompt_hash: str | None = None) -> str:
        """The digest of a request: the endpoint's identity, the template's hash and the whole body
        (a soft-token prompt by the digest of its embeddings)."""
        request = dict(body)
        if "prompt_embeds" in request:
            request["prompt_embeds"] = hashlib.sha256(str(request["prompt_embeds"]).encode()).hexdigest()
        text = json.dumps({"endpoint": endpoint_identity, "template": prompt_hash, "request": request},
                          sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> Reply | None:
        """The reply stored under ``key``, or None."""
        row = self._conn().execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        data = json.loads(row[0])
        if data.get("key") != key:  # a row is only ever its own key's
            self.misses += 1
            return None
        self.hits += 1
        return Reply(text=data["text"], finish_reason=data["finish_reason"], model=data["model"],
                     prompt_tokens=data["prompt_tokens"], completion_tokens=data["completion_tokens"],
                     cached_tokens=data.get("cached_tokens", 0))

    def put(self, key: str, reply: Reply) -> None:
        """Store a reply under ``key`` (the first one stored for a key stays)."""
        data = {"key": key, "text": reply.text, "finish_reason": reply.finish_reason, "model": reply.model,
                "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                "cached_tokens": reply.cached_tokens}
        self._conn().execute("INSERT OR IGNORE INTO replies VALUES (?, ?)", (key, json.dumps(data, ensure_ascii=False)))

    @property
    def hit_rate(self) -> float | None:
        """Hits over lookups (None before any lookup)."""
        n = self.hits + self.misses
        return self.hits / n if n else None
