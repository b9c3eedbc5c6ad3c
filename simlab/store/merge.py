"""Merging the stores of disjoint shards of one run (``--shard i/n``) into one store: each shard is
attached read-only and taken in whole, in one transaction, or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from simlab.errors import InputError
from simlab.store.connection import STORE_FILE, store_path
from simlab.store.creation import MERGING_PREFIX, clear_leftovers, make_run_dir, remove_made, take_lock, unborn_store
from simlab.store.damage import quick_check
from simlab.store.meta import LATEST_META, MATCHED_META, ConfigMismatchError, meta_as_today, meta_differences, now
from simlab.store.migration import OLDER_VERSIONS, legacy_views
from simlab.store.readers import run_meta
from simlab.store.schema import COLUMNS, STORE_SCHEMA_VERSION
from simlab.store.writer import DuplicateSessionError, RunStore, StoreError

__all__ = ["merge", "merge_from"]


def merge_from(store: RunStore, shard: str | Path) -> int:
    """Take another store's sessions, failures, calls and scores into ``store``; returns the new sessions.

    One transaction per shard; a shard already merged is skipped; a session stored in both with
    different content raises ``DuplicateSessionError`` and merges nothing. The shard is opened
    read-only; a shard of an older store version is read through views under this schema's names.
    """
    path = store_path(shard)
    if path.exists():
        quick_check(path)  # a damaged shard is named, not half read
    shard_meta = run_meta(path)
    version = shard_meta.get("store_schema")
    if version != STORE_SCHEMA_VERSION and not (isinstance(version, int) and version in OLDER_VERSIONS):
        raise InputError(f"store schema {version} is not {STORE_SCHEMA_VERSION} (made by another simlab version); "
                         "nothing was merged", file=path)
    merged = store.meta().get("merged", [])
    if shard_meta.get("store_id") in {m["store_id"] for m in merged}:
        return 0
    db = store.connection
    # read-only: a merge never writes to a shard (not allowed inside a transaction)
    db.execute("ATTACH DATABASE ? AS shard", (f"{path.resolve().as_uri()}?mode=ro",))
    src: dict[str, str] = {}
    try:
        src = legacy_views(db, version, "shard")  # table → where to read it: shard.X, or a view for an older shard
        with store.transaction():
            clash = db.execute(
                f"SELECT s.conversation_id FROM {src['sessions']} s JOIN main.sessions m USING (conversation_id)"
                " WHERE s.record_sha256 != m.record_sha256"
            ).fetchall()
            if clash:
                raise DuplicateSessionError(f"{path} and {store.path} hold different results for {[c[0] for c in clash]}")
            clash = db.execute(
                f"SELECT s.participant_id FROM {src['participants']} s JOIN main.participants m"
                " USING (participant_id, source) WHERE s.persona_id IS NOT m.persona_id"
                " OR s.rendering IS NOT m.rendering OR s.simulator_model IS NOT m.simulator_model"
            ).fetchall()
            if clash:
                raise StoreError(f"{path} and {store.path} describe participants differently: {[c[0] for c in clash]}")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS new_keys (k TEXT PRIMARY KEY)")
            db.execute("DELETE FROM temp.new_keys")
            db.execute(
                f"INSERT INTO temp.new_keys SELECT conversation_id FROM {src['sessions']}"
                " WHERE conversation_id NOT IN (SELECT conversation_id FROM main.sessions)"
            )
            n_new = int(db.execute("SELECT count(*) FROM temp.new_keys").fetchone()[0])
            cols = ", ".join(COLUMNS["participants"])
            db.execute(
                f"INSERT INTO main.participants ({cols}) SELECT {cols} FROM {src['participants']} s WHERE NOT EXISTS"
                " (SELECT 1 FROM main.participants m WHERE m.participant_id = s.participant_id AND m.source = s.source)"
            )
            for table in ("sessions", "conversations", "turns", "judgements", "bdm", "instruments", "answers"):
                if table in src:
                    cols = ", ".join(COLUMNS[table])
                    db.execute(
                        f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM {src[table]}"
                        f" WHERE conversation_id IN (SELECT k FROM temp.new_keys)"
                    )
            cols = ", ".join(COLUMNS["llm_calls"])
            failed = f" OR recorded_with IN (SELECT conversation_id FROM {src['failures']})" if "failures" in src else ""
            db.execute(
                f"INSERT INTO main.llm_calls ({cols}) SELECT {cols} FROM {src['llm_calls']} WHERE recorded_with IS NULL"
                f" OR recorded_with IN (SELECT k FROM temp.new_keys){failed} ORDER BY call_id"
            )
            for table in ("failures", "autograde", "arms"):
                if table in src:
                    cols = ", ".join(COLUMNS[table])
                    db.execute(
                        f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM {src[table]} WHERE true"
                        " ON CONFLICT DO NOTHING"
                    )
            merged.append({"store_id": shard_meta.get("store_id"), "path": str(path), "sessions": n_new, "at": now()})
            db.execute("INSERT OR REPLACE INTO meta VALUES ('merged', ?)", (json.dumps(merged),))
    finally:
        for name in src.values():
            if name.startswith("temp."):
                db.execute(f"DROP VIEW IF EXISTS {name}")
        db.execute("DETACH DATABASE shard")
    return n_new


def merge(out_dir: str | Path, shards: Iterable[str | Path]) -> RunStore:
    """Merge the stores of disjoint shards of one run (e.g. ``--shard i/n``) into ``out_dir``.

    Every shard must have the same experiment, prompts, models and seed (``MATCHED_META``) as the
    merged store; how each shard was run (its out_dir, concurrency, …) may differ. Otherwise
    ``ConfigMismatchError``. A new ``out_dir`` gets its store only when every shard is in; a merge
    into an existing run takes the run's lock (``RunLocked`` while another process writes it).
    """
    paths = [store_path(p) for p in shards]
    if not paths:
        raise InputError("merge needs at least one shard store", field="shards")
    metas = [run_meta(p) for p in paths]
    first = meta_as_today(metas[0])
    base = {k: v for k, v in first.items() if k in MATCHED_META or k in LATEST_META}
    for path, meta in zip(paths, metas):
        differences = meta_differences(base, {k: v for k, v in meta.items() if k in MATCHED_META or k == "config"})
        if differences:
            raise ConfigMismatchError(path, differences)
    out = Path(out_dir)
    made = make_run_dir(out)
    lock = take_lock(out / STORE_FILE, None, made)  # held throughout: no other process writes the output meanwhile
    try:
        clear_leftovers(out)
        if (out / STORE_FILE).exists() and not unborn_store(out / STORE_FILE):
            target = RunStore.open_or_create(out, base)
            try:  # into an existing run: each shard whole or not at all (its meta lists the shards taken)
                for path in paths:
                    merge_from(target, path)
            except BaseException:
                target.close()
                raise
            return target
        # a new output is built beside it and renamed into place once every shard is in: a merge
        # killed half-way leaves no store that looks complete
        building = Path(tempfile.mkdtemp(dir=out, prefix=MERGING_PREFIX))
        try:
            with RunStore.create(building, base) as staged:
                for path in paths:
                    merge_from(staged, path)
            os.replace(building / STORE_FILE, out / STORE_FILE)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return RunStore.open(out)
    except BaseException:
        lock.release()
        remove_made(made)
        raise
    finally:
        lock.release()  # the returned store holds the lock on its own
