"""Error types shared by every stage.

``InputError`` is what bad user input raises: it names the file, the row/line and
the field, and the CLIs turn it into a one-line message and exit status 2.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "BackendUnavailable",
    "BackendUnusable",
    "ConfigError",
    "InputError",
    "LLMError",
    "SimlabError",
    "StructuredOutputError",
    "exit_status",
]


class SimlabError(Exception):
    """Base class of every error simlab raises on purpose."""


class InputError(SimlabError):
    """Bad user input (config, personas, human data): names file, row and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.row is not None:
                where += f":{self.row}"
            where += ": "
        elif self.row is not None:
            where = f"row {self.row}: "
        fld = f"field '{self.field}': " if self.field else ""
        return f"{where}{fld}{self.message}"


class ConfigError(InputError):
    """An invalid configuration file or value."""


class LLMError(SimlabError):
    """A model call that still failed after its retries (or its deadline)."""

    asked: str | None = None
    """The question being asked when the call failed (set by the protocol), for the session's failure reason."""

    call: Any = None
    """The failed call's record (a ``simlab.llm.CallRecord``, set by the client that made it)."""

    def __init__(self, message: str, *, attempts: int = 0, status: int | None = None) -> None:
        self.attempts = attempts
        self.status = status
        super().__init__(message)


class StructuredOutputError(LLMError):
    """A reply that kept breaking its schema; carries the last raw text and the reason."""

    def __init__(self, message: str, *, raw_text: str, reason: str, attempts: int = 0) -> None:
        self.raw_text = raw_text
        self.reason = reason
        super().__init__(f"{message}: {reason}", attempts=attempts)


class BackendUnavailable(SimlabError):
    """An endpoint that stopped answering (connection refused or reset, timeouts, 502/503/504 after
    every retry). Not an ``LLMError``: it says nothing about the session that met it, so the run
    stops instead of recording sessions as failed, and a later run does them.

    ``diagnosis`` is filled in by whoever knows more (the embedded server's exit signal and log).
    """

    call: Any = None
    """The record of the call that found the endpoint gone (a ``simlab.llm.CallRecord``, set by the client)."""

    def __init__(self, endpoint: str, urls: list[str], cause: str) -> None:
        self.endpoint = endpoint
        self.urls = urls
        self.cause = cause
        self.diagnosis: str | None = None
        super().__init__(endpoint, urls, cause)

    def __str__(self) -> str:
        text = f"endpoint '{self.endpoint}' ({', '.join(self.urls)}) stopped answering: {self.cause}"
        return f"{text}\n{self.diagnosis}" if self.diagnosis else text


class BackendUnusable(BackendUnavailable):
    """An endpoint that answers, but for a whole window (its ``dead_after_s``) never in a usable shape
    (bodies that are not JSON, no choices, error objects in a 200): stopped like a dead one, since
    no session could be done with it; ``cause`` says how long and quotes a reply (redacted, brief)."""

    def __str__(self) -> str:
        text = (f"endpoint '{self.endpoint}' ({', '.join(self.urls)}) answers, but never in a usable shape: "
                f"{self.cause}. Check that the URL is the server's OpenAI-compatible /v1 address, that it "
                "serves the configured model and that its replies are chat completions (e.g. curl a request "
                "to <base_url>/chat/completions), then run the same command again: the sessions that were "
                "not finished were not recorded and will be done then.")
        return f"{text}\n{self.diagnosis}" if self.diagnosis else text


def exit_status(body: Callable[[], int]) -> int:
    """Run a command's ``body`` and map what it raises to a message on stderr and an exit status.

    ``InputError`` and invalid options (pydantic ``ValidationError``) → 2; any other error simlab
    raises on purpose → 1; Ctrl-C → 130. Anything else is a bug and keeps its traceback.
    """
    from pydantic import ValidationError

    try:
        return body()
    except (InputError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed work is kept; run the same command to resume", file=sys.stderr)
        return 130
    except SimlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        print(f"error: disk full: writing {exc.filename or 'a file'} failed ({exc.strerror}). Free some space, then "
              "run the same command again (what was completed before is kept)", file=sys.stderr)
        return 1
    except Exception as exc:
        if "database or disk is full" not in str(exc):
            raise
        print(f"error: disk full: an SQLite write failed ({exc}). Free some space, then run the same command "
              "again (what was completed before is kept)", file=sys.stderr)
        return 1


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, quota or file-size limit reached
