"""Secret redaction, one marker for every place a secret can surface: the key values a client knows
(in error texts and call records), the key values a run's config names (scrubbed from every row its
store writes: replies, calls, failures, so from exports and reports too), fields whose names say
they hold a secret (in the config stored with a run), and strings shaped like an API key (in a
report, the last line of defence).

A key shorter than ``MIN_SECRET_LENGTH`` could not be scrubbed without scrubbing ordinary words
too, so simlab refuses one when the config names it (``simlab.llm.config.api_key``)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["KEY_SHAPE", "MIN_SECRET_LENGTH", "REDACTED", "SECRET_FIELD", "Redactor", "redact_fields",
           "redact_key_shapes"]

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 8
"""The shortest API key simlab accepts: a shorter value ("abc", "token") would also match ordinary
words of a reply, so it could not be scrubbed from stored text without changing that text."""
KEY_ENV_FIELD = "api_key_env"  # a config field naming the environment variable that holds a key

M = TypeVar("M", bound=BaseModel)

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

    @classmethod
    def of_config(cls, data: Any) -> Redactor:
        """A redactor knowing the key of every ``api_key_env`` field in plain config data (at any
        depth), read from the environment (variables that are not set are skipped).

        >>> os.environ["SIMLAB_DOCTEST_KEY"] = "hunter2-not-sk-shaped"
        >>> scrub = Redactor.of_config({"endpoints": {"a": {"api_key_env": "SIMLAB_DOCTEST_KEY"}}})
        >>> scrub("the key is hunter2-not-sk-shaped.")
        'the key is [redacted].'
        >>> del os.environ["SIMLAB_DOCTEST_KEY"]
        """
        found = cls()
        stack = [data]
        while stack:
            value = stack.pop()
            if isinstance(value, dict):
                name = value.get(KEY_ENV_FIELD)
                if isinstance(name, str) and name:
                    found = found.adding(os.environ.get(name))
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
        return found

    def __call__(self, text: str) -> str:
        """``text`` with every known secret value replaced by ``REDACTED``."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def scrub(self, value: Any) -> Any:
        """Plain data (dicts, lists, tuples, scalars) with every string redacted, keys included."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.scrub(v) for v in value)
        return value

    def scrub_model(self, record: M) -> M:
        """``record`` with every known secret removed from its text fields, at any depth (the same
        object when none is in it, which is the usual case and costs one JSON dump)."""
        if not self.secrets:
            return record
        text = record.model_dump_json()
        # a key inside a JSON string appears with its JSON escapes (a quote or backslash in a key)
        escaped = {s: json.dumps(s, ensure_ascii=False)[1:-1] for s in self.secrets}
        if not any(e in text for e in escaped.values()):
            return record
        for e in escaped.values():
            text = text.replace(e, REDACTED)
        return type(record).model_validate_json(text)

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
