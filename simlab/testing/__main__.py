"""Run the scripted stub server in the foreground: ``python -m simlab.testing --port 8811``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from simlab.testing.stub_server import StubServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simlab.testing",
        description="Serve a scripted OpenAI-compatible chat endpoint on 127.0.0.1 for offline tests. "
        "Structured-output requests are answered with JSON generated from their schema.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: a free one; printed on start)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each reply")
    parser.add_argument("--seed", type=int, default=0, help="seed for generated structured replies")
    parser.add_argument("--break-after", type=int, metavar="N",
                        help="after N chat requests, break down for good (see --break-how)")
    parser.add_argument("--break-how", choices=("exit", "hang", "503"), default="exit",
                        help="exit: the process ends; hang: requests never answer; 503: every request gets 503")
    args = parser.parse_args(argv)
    breakdown = (args.break_after, args.break_how) if args.break_after is not None else None
    server = StubServer(delay=args.delay, seed=args.seed, port=args.port, breakdown=breakdown).start()
    print(server.base_url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
