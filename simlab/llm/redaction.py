"""Secret redaction: a client's API key values replaced in every error text it builds, so a server
that echoes a key cannot put it into the run store, a log or a report. Each client holds its own
``Redactor`` with the keys of its own endpoints; nothing is shared between clients."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REDACTED", "Redactor"]

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words


@dataclass(frozen=True)
class Redactor:
    """Replaces the known secret values in text; ``adding`` returns a new redactor that also knows one more."""

    secrets: frozenset[str] = frozenset()

    def adding(self, secret: str | None) -> Redactor:
        """This redactor and ``secret`` (ignored when absent or too short to be a key)."""
        if not secret or len(secret) < MIN_SECRET_LENGTH or secret in self.secrets:
            return self
        return Redactor(self.secrets | {secret})

    def __call__(self, text: str) -> str:
        """``text`` with every known secret value replaced by ``[redacted]``."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def brief(self, value: object, limit: int = 300) -> str:
        """``str(value)`` redacted, on one line and at most ``limit`` characters (redacted before it
        is cut, so no part of a key survives the cut)."""
        text = self(str(value)).replace("\n", " ")
        return text if len(text) <= limit else text[:limit] + "…"
