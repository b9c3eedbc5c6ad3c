"""Endpoint routing: an endpoint's replicas, its rate limit and in-flight bounds, and which replica a
call goes to. Calls inside an ``affinity`` block stay on one replica, whose prompt cache then holds
their stream's prefix; new streams go to the replica with the fewest open ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from asyncio_throttle.throttler import Throttler

from simlab.llm.backends import Backend, Transport, backend_of
from simlab.llm.config import EndpointConfig, api_key

__all__ = ["Endpoint", "Replica", "affinity"]


# The key of the stream of work a call belongs to (e.g. one arm's thread of a conversation) and
# the key of the unit that owns it (the conversation): a stream's calls stay on one replica of an
# endpoint until its owner's block ends.
@dataclass(frozen=True)
class _Stream:
    """The affinity key of the calls in a block, and the places its outermost block releases at its end."""

    key: str
    releases: list[Callable[[], None]]


_affinity: ContextVar[_Stream | None] = ContextVar("simlab_affinity", default=None)


@contextmanager
def affinity(key: str | None) -> Iterator[None]:
    """Send the calls made inside (including tasks started inside) to one replica per endpoint.

    A new key goes to the replica with the fewest open keys, so streams of work (not single
    calls) are spread evenly. Nested blocks name streams of the outer block's unit: their
    places are kept until the outermost block ends, then released.
    """
    outer = _affinity.get()
    stream = None if key is None else _Stream(key, outer.releases if outer else [])
    token = _affinity.set(stream)
    try:
        yield
    finally:
        _affinity.reset(token)
        if stream is not None and outer is None:
            for release in stream.releases:
                release()


class Replica:
    """One server of an endpoint: its URL, its bound on requests in flight and what it carries."""

    def __init__(self, url: str, in_flight: int) -> None:
        self.url = url
        self.bound = in_flight
        self.in_flight = asyncio.Semaphore(in_flight)
        self.load = 0  # calls waiting for or holding a slot
        self.keys = 0  # open affinity keys placed here
        self.down = False
        self.http: tuple[asyncio.AbstractEventLoop, Transport] | None = None  # its transport on one event loop


class Endpoint:
    """One configured endpoint of a client: its backend, replicas, API key, rate limit and affinity placements."""

    def __init__(self, name: str, cfg: EndpointConfig, base_urls: list[str], backend: Backend | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.backend = backend or backend_of(cfg)
        self.replicas = [Replica(url, cfg.in_flight) for url in base_urls]  # in-flight bound per replica
        self.key = api_key(cfg)
        self.secret = self.key if cfg.api_key_env else None  # a real key (from the environment), to redact
        self.sticky: dict[str, Replica] = {}
        self.last_ok = float("-inf")  # when a usable reply last came back (time.monotonic)
        self.first_sent: float | None = None  # when its first request was sent: the dead window starts there
        self.unusable: str | None = None  # the latest reply that came back in no usable shape, in brief
        self.failed_in_row = 0  # attempts failed one after the other, over all its calls, since a usable reply
        self.throttle: Throttler | None = None
        if cfg.rate_limit:
            # asyncio-throttle counts whole requests per period: 200/s is 200 per second, while a
            # rate that is not a whole number (0.5/s, 2.5/s) is one request per 1/rate seconds
            whole = float(cfg.rate_limit).is_integer()
            self.throttle = (Throttler(rate_limit=int(cfg.rate_limit), period=1.0) if whole
                             else Throttler(rate_limit=1, period=1.0 / cfg.rate_limit))

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def silent_for(self, now: float) -> float:
        """Seconds since a usable reply last came back (or since the first request, if none has)."""
        since = max(self.last_ok, self.first_sent if self.first_sent is not None else now)
        return now - since

    def pick(self) -> Replica:
        """The affinity key's replica while it answers; else the one that answers with the fewest
        open keys (then the least loaded)."""
        if len(self.replicas) == 1:
            return self.replicas[0]
        current = _affinity.get()
        key = current.key if current else None
        chosen = self.sticky.get(key) if key is not None else None
        if chosen is not None and not chosen.down:
            return chosen
        alive = [r for r in self.replicas if not r.down] or self.replicas  # all down: keep trying
        best = min(alive, key=lambda r: (r.keys, r.load))
        if current is not None:
            if chosen is not None:
                chosen.keys -= 1  # moved off a replica that stopped answering
            else:
                current.releases.append(lambda: self._release(current.key))
            best.keys += 1
            self.sticky[current.key] = best
        return best

    def _release(self, key: str) -> None:
        replica = self.sticky.pop(key, None)
        if replica is not None:
            replica.keys -= 1
