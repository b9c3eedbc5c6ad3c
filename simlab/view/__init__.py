"""``simlab view``: a local, read-only web app to read every session of one or more runs, the
matched human conversations beside them, and the run's fidelity results (aiohttp's web server,
Jinja2 templates; nothing fetched from the network, nothing written)."""

from __future__ import annotations

from simlab.view.app import make_app
from simlab.view.core import RunHandle, ViewState

__all__ = ["RunHandle", "ViewState", "make_app"]
