"""``simlab view RUN [RUN ...] [--human DATA] [--host H] [--port N]``: serve the viewer locally.

Binds 127.0.0.1 unless ``--host`` says otherwise (then it warns: the viewer has no login). Exit
status 2 for bad input (a path that is not a run), 130 when interrupted."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from simlab.errors import InputError
from simlab.view.app import make_app

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simlab view", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each holds store.sqlite)")
    p.add_argument("--human", metavar="DATA", help="human data (a fidelity import) shown beside the simulated")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        app = make_app(args.runs, human=args.human)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can read the runs "
              "(the viewer has no login)", file=sys.stderr)

    def announce(text: str) -> None:
        print(text.replace("http://", "simlab view: http://", 1) if "http://" in text else text, flush=True)

    try:
        web.run_app(app, host=args.host, port=args.port, print=announce, access_log=None)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
