"""The run store: one SQLite file per run (``runs/<run_id>/store.sqlite``), nothing lost.

A completed session is written in ONE transaction (all its rows or none), so a run
that is killed at any moment resumes with only whole sessions on disk and redoes the
missing ones. The run's resolved config, prompt hashes, model ids and seed live in
the ``meta`` table; resuming with a different config is refused with a message that
names every differing field. Readers get pandas frames (``load_run``) or files
(``export``); they open the file read-only and never change it.

Writing the same completed session twice is a no-op when the record is identical
(a resumed run may repeat a write) and raises ``DuplicateSessionError`` when it
differs (two different results for one session is a bug, never silently kept).

Concurrency: one process, writes from the event-loop thread (each write is a short
synchronous transaction, so coroutines cannot interleave inside one). Other
processes may read while a run writes (WAL). Shards write separate stores. A second
process that opens a run for writing is refused, naming the one that holds it
(``lock``: ``RunLocked``); the kernel drops a holder's lock when it dies.

The modules: ``schema`` (DDL, columns, dtypes), ``migration`` (older stores), ``connection``
(opening the file), ``writer`` (``RunStore``), ``readers`` (``load_run`` and the other readers,
``export``), ``merge`` (shards), ``meta`` (config comparison and redaction), ``failures``
(failures grouped by cause), ``filesystem`` (network file system detection), ``lock`` (one
writer per run), ``creation`` (a new store whole or not at all), ``cli`` (``python -m simlab.store``).
"""

from simlab.store.cli import main
from simlab.store.connection import STORE_FILE
from simlab.store.failures import FailureGroup, group_failures
from simlab.store.filesystem import NETWORK_FILESYSTEMS, NetworkFilesystemWarning, filesystem_type
from simlab.store.lock import RunLocked
from simlab.store.merge import merge, merge_from
from simlab.store.meta import (
    LATEST_META,
    MATCHED_META,
    REDACTED,
    ConfigMismatchError,
    command_line,
    diff_config,
)
from simlab.store.readers import CallCount, StoreCounts, export, load_run, read_counts, read_table, run_meta
from simlab.store.schema import COLUMNS, STORE_SCHEMA_VERSION, STORED_TABLES
from simlab.store.writer import DuplicateSessionError, RunStore, StoreError
from simlab.tables import JUDGEMENT_COLUMNS

__all__ = [
    "COLUMNS",
    "JUDGEMENT_COLUMNS",
    "LATEST_META",
    "MATCHED_META",
    "NETWORK_FILESYSTEMS",
    "REDACTED",
    "STORED_TABLES",
    "STORE_FILE",
    "STORE_SCHEMA_VERSION",
    "CallCount",
    "ConfigMismatchError",
    "DuplicateSessionError",
    "FailureGroup",
    "NetworkFilesystemWarning",
    "RunLocked",
    "RunStore",
    "StoreCounts",
    "StoreError",
    "command_line",
    "diff_config",
    "export",
    "filesystem_type",
    "group_failures",
    "load_run",
    "main",
    "merge",
    "merge_from",
    "read_counts",
    "read_table",
    "run_meta",
]
