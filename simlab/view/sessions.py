"""The viewer's sessions page(s)."""

from __future__ import annotations

from aiohttp import web

__all__ = ["setup"]


def setup(app: web.Application) -> None:
    """Register this module's routes on app."""
