"""``simlab view RUN [RUN ...] [--human DATA] [--host H] [--port N] [--check]``: serve the viewer locally.

Binds 127.0.0.1 unless ``--host`` says otherwise (then it warns: the viewer has no login) and prints
its URL; stop it with Ctrl+C. The stores are read, never written: a run in progress can be viewed,
its pages show what it has written so far. ``--check`` serves on a free port, fetches each kind of
page once (the runs list, each run's page and sessions table, and every other page the viewer has
for one of its sessions), prints what it fetched and exits: 0 when every page answered, 1 if one
did not. Exit status 2 for bad input (a path that is not a run), 130 when interrupted."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import urllib.error
import urllib.request

from aiohttp import web

from simlab.errors import InputError
from simlab.view.app import make_app
from simlab.view.core import STATE, conversation_url

__all__ = ["main"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simlab view", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each holds store.sqlite)")
    p.add_argument("--human", metavar="DATA", help="human data (a fidelity import) shown beside the simulated")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--check", action="store_true",
                   help="start on a free port, fetch each kind of page once, print OK and exit (0 all answered, 1 not)")
    return p


async def _serve(app: web.Application, host: str, port: int, check: bool) -> int:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
        url = f"http://{shown}:{bound[1]}/"
        if check:
            paths = _pages(app)  # here: the sqlite connections it opens belong to the server's thread
            return await asyncio.get_running_loop().run_in_executor(None, _check, paths, url)
        print(f"simlab view: {url}  (Ctrl+C stops it)", flush=True)
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def _pages(app: web.Application) -> list[str]:
    """One path of each page kind: each route filled in with each run and its first session."""
    from simlab.view.session_index import index_of, parse_filter

    state = app[STATE]
    paths = []
    for handle in state.runs.values():
        rows = index_of(state, handle).page(parse_filter({}), size=1).rows
        first = rows[0].conversation_id if rows else None
        for resource in app.router.resources():
            info = resource.get_info()
            pattern = info.get("formatter") or info.get("path")
            if pattern is None or str(pattern).startswith("/static"):
                continue
            if "{conversation_id}" in pattern:
                if first is None:
                    continue
                paths.append(conversation_url(handle.run_id, first) + pattern.split("{conversation_id}", 1)[1])
            else:
                paths.append(re.sub(r"\{run_id\}", handle.run_id, pattern))
    return list(dict.fromkeys(paths))


def _check(paths: list[str], url: str) -> int:
    failed = 0
    for path in paths:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=300) as r:
                status = r.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        ms = (time.perf_counter() - t0) * 1000
        print(f"{status} {ms:7.1f} ms  {path}", flush=True)
        failed += status != 200
    if failed:
        print(f"simlab view --check: {failed} page(s) did not answer 200 (see above)", file=sys.stderr)
        return 1
    print("OK", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        app = make_app(args.runs, human=args.human)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = "127.0.0.1" if args.check else args.host
    if host not in LOOPBACK:
        print(f"warning: serving on {host}: anyone who can reach this address can read the runs "
              "(the viewer has no login); leave --host out to serve this machine only", file=sys.stderr)
    try:
        return asyncio.run(_serve(app, host, 0 if args.check else args.port, args.check))
    except InputError as exc:  # a store that cannot be read, found when the viewer starts
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the port is taken, the address is not this machine's
        print(f"error: cannot listen on {host}:{args.port} ({exc.strerror or exc}); pick another --port "
              "(0 picks a free one)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
