"""``python -m simlab.store`` (also ``simlab store``): export a run's tables to files, merge the
stores of ``--shard i/n`` runs into one run directory, or salvage a damaged store."""

from __future__ import annotations

from simlab.errors import exit_status
from simlab.store.damage import disk_full, is_disk_full
from simlab.store.merge import merge
from simlab.store.readers import export
from simlab.store.salvage import salvage

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m simlab.store export RUN_DIR OUT_DIR`` / ``merge OUT_DIR SHARD_DIR…`` / ``salvage RUN OUT``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m simlab.store",
                                     description="Export a run's tables, or merge the stores of --shard i/n runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write every table of a run as CSV, Parquet or JSONL")
    ex.add_argument("run_dir")
    ex.add_argument("out_dir")
    ex.add_argument("--format", default="csv", choices=["csv", "parquet", "jsonl"])
    mg = sub.add_parser("merge", help="merge shard run directories into one run directory")
    mg.add_argument("out_dir")
    mg.add_argument("shards", nargs="+")
    sv = sub.add_parser("salvage", help="copy every intact session of a damaged store into a new run directory")
    sv.add_argument("run_dir", help="the damaged run directory (or its store.sqlite)")
    sv.add_argument("out_dir", help="the new run directory (must not exist)")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.command == "export":
            try:
                print(export(args.run_dir, args.out_dir, args.format))
            except OSError as exc:  # pandas' writers do not say which file: name the export's folder
                if is_disk_full(exc):
                    raise disk_full(args.out_dir, exc) from None
                raise
        elif args.command == "salvage":
            print(salvage(args.run_dir, args.out_dir).text())
        else:
            with merge(args.out_dir, args.shards) as store:
                print(f"{args.out_dir}: {store.counts().sessions_completed} sessions")
        return 0

    return exit_status(body)
