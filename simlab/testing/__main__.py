"""Run the scripted stub server in the foreground: ``python -m simlab.testing --port 8811``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from simlab.testing.stub_server import FAULT_KINDS, Latency, StubServer

__all__ = ["main"]


def _fault_rate(text: str) -> tuple[str, float]:
    kind, _, rate = text.partition("=")
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate after '=' must be a number (e.g. 5xx=0.2)") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be between 0 and 1")
    return kind, value


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
    parser.add_argument("--break-how", choices=("exit", "hang", "503", "malformed"), default="exit",
                        help="exit: the process ends; hang: requests never answer; 503: every request gets 503; "
                        "malformed: every reply is a 200 that is not a completion")
    parser.add_argument("--latency", type=float, metavar="S",
                        help="model a loaded GPU fleet: S seconds per reply, plus --per-token, with --jitter")
    parser.add_argument("--per-token", type=float, default=0.015, metavar="S",
                        help="with --latency: seconds per completion token (default 0.015)")
    parser.add_argument("--jitter", type=float, default=0.2, metavar="F",
                        help="with --latency: reply time varies uniformly by ±F (default 0.2)")
    parser.add_argument("--fault-rate", type=_fault_rate, action="append", default=[], metavar="KIND=P",
                        help="share P of requests get fault KIND (5xx, 429, timeout, malformed); repeatable")
    parser.add_argument("--deterministic", action="store_true",
                        help="each reply depends on its request alone (runs split in shards get the same answers)")
    parser.add_argument("--record", metavar="FILE", help="append every chat request's body to FILE (JSONL)")
    parser.add_argument("--no-log", action="store_true", help="count requests without keeping their bodies")
    args = parser.parse_args(argv)
    breakdown = (args.break_after, args.break_how) if args.break_after is not None else None
    latency = Latency(args.latency, args.per_token, args.jitter) if args.latency is not None else None
    rates = dict(args.fault_rate)
    if sum(rates.values()) > 1:
        parser.error(f"--fault-rate: the rates add up to {sum(rates.values()):g}, more than 1")
    server = StubServer(delay=args.delay, seed=args.seed, port=args.port, breakdown=breakdown, latency=latency,
                        fault_rates=rates, keep_log=not args.no_log,
                        deterministic=args.deterministic, record=args.record).start()
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
