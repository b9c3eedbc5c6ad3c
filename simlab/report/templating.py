"""The Jinja2 environment of every HTML report: autoescaping on, undefined names an error, and a
last line of defence that redacts anything shaped like an API key in every ``{{ expression }}``."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from simlab.redaction import redact_key_shapes

__all__ = ["environment", "finalize"]


def finalize(value: Any) -> Any:
    """Every ``{{ expression }}`` before escaping: None as nothing, and anything shaped like an API key
    redacted (the last line of defence for keys; the viewer's templates use it too)."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return Markup(redact_key_shapes(str(value)))
    if isinstance(value, str):
        return redact_key_shapes(value)
    return value


def environment() -> Environment:
    """The report templates (``simlab/report/templates``), autoescaped."""
    return Environment(
        loader=PackageLoader("simlab.report", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=StrictUndefined,
        finalize=finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
