"""An endpoint kind simlab does not ship, added from outside the package with no edit of simlab.

``keyfile``: an OpenAI-compatible server whose API key is read from a file each time a connection
is opened (a mounted secret that is rotated, never in the environment), sent with a header naming
the tenant. Its config type has its own two fields beside the ones every endpoint has; its
transport is simlab's HTTP transport with that key and header.

Registered from Python (``BACKENDS.register(KEYFILE)``), or by a package's entry point in the
``simlab.backends`` group naming ``backend`` (a callable that returns the part)::

    [project.entry-points."simlab.backends"]
    keyfile = "tests.extensions.backends_ext:backend"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from simlab.llm.backends import Backend, Transport
from simlab.llm.config import EndpointConfig
from simlab.llm.transport import HTTP

__all__ = ["KEYFILE", "KeyFileEndpoint", "backend"]


class KeyFileEndpoint(EndpointConfig):
    """An OpenAI-compatible server at ``base_url`` whose API key is in a file."""

    default_in_flight: ClassVar[int] = 4  # a small shared gateway: few requests at once unless told

    kind: Literal["keyfile"] = "keyfile"
    key_file: str
    """The file holding the API key (read when a connection is opened; surrounding whitespace ignored)."""
    tenant: str = "simlab"
    """Sent as the ``X-Tenant`` header."""


def _transport(config: Any, *, url: str, key: str, connections: int) -> Transport:
    secret = Path(config.key_file).read_text(encoding="utf-8").strip()
    return HTTP(url, secret, connections, headers={"X-Tenant": config.tenant})


KEYFILE = Backend("keyfile", KeyFileEndpoint, _transport,
                  description="an OpenAI-compatible server whose API key is read from a file")


def backend() -> Backend:
    """The entry point's callable: the part to register."""
    return KEYFILE
