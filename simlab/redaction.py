"""Secret redaction, one marker for every place a secret can surface: the key values a client knows
(in error texts and call records), fields whose names say they hold a secret (in the config stored
with a run), and strings shaped like an API key (in a report, the last line of defence)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["KEY_SHAPE", "REDACTED", "SECRET_FIELD", "Redactor", "redact_fields", "redact_key_shapes"]

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words

# An OpenAI-style key: "sk-" and at least 8 more key characters ("sk-short" is a word, not a key)
KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9_\-]{8,}")
# Field names that hold a secret's value; "*_env" fields hold the name of a variable, not a secret
SECRET_FIELD = re.compile(r"(api_?key|secret|password|passwd|authorization|access_token|bearer)", re.I)


@dataclass(frozen=True)
class Redactor:
    """Replaces the known secret values in text; ``adding`` returns a new redactor that also knows
    one more. A client holds its own, with the keys of its own endpoints: nothing is shared."""

    secrets: frozenset[str] = frozenset()

    def adding(self, secret: str | None) -> Redactor:
        """This redactor and ``secret`` (ignored when absent or too short to be a key)."""
        if not secret or len(secret) < MIN_SECRET_LENGTH or secret in self.secrets:
            return self
        return Redactor(self.secrets | {secret})

    def __call__(self, text: str) -> str:
        """``text`` with every known secret value replaced by ``REDACTED``."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def brief(self, value: object, limit: int = 300) -> str:
        """``str(value)`` redacted, on one line and at most ``limit`` characters (redacted before it
        is cut, so no part of a key survives the cut)."""
        text = self(str(value)).replace("\n", " ")
        return text if len(text) <= limit else text[:limit] + "…"


def redact_key_shapes(text: str) -> str:
    """``text`` with every string shaped like an API key (``KEY_SHAPE``) replaced by ``REDACTED``."""
    return KEY_SHAPE.sub(REDACTED, text)


def _secret_field(key: Any, value: Any) -> bool:
    return bool(SECRET_FIELD.search(str(key))) and not str(key).endswith("_env") and value not in (None, "")


def redact_fields(value: Any) -> Any:
    """Plain JSON data (dicts, lists, scalars) with the value of every secret-named field
    (``SECRET_FIELD``, at any depth) replaced by ``REDACTED``."""
    if isinstance(value, dict):
        return {k: (REDACTED if _secret_field(k, v) else redact_fields(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_fields(v) for v in value]
    return value
