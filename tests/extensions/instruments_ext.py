"""Instruments defined outside simlab, with their templates in a folder of their own.

``use_again`` (end of conversation): would you use this assistant again? yes/no per letter.
``clarity`` (after each turn): how clear was each reply, 1–5. ``one_word`` (end): each assistant
in one word (free text). ``instruments()`` returns them, for a package's entry point in the
group ``simlab.instruments``; Python code registers them with ``INSTRUMENTS.register``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from simlab.instruments import Instrument, per_letter, scores_schema

__all__ = ["CLARITY", "ONE_WORD", "TEMPLATES", "USE_AGAIN", "instruments"]

TEMPLATES = Path(__file__).parent / "templates"

USE_AGAIN = Instrument(
    name="use_again", template="use_again.j2", folder=TEMPLATES, scope="end",
    schema=lambda letters, protocol: per_letter("UseAgain", letters, bool),
    description="would you use this assistant again? (yes/no per reply)",
)
CLARITY = Instrument(
    name="clarity", template="clarity.j2", folder=TEMPLATES, scope="turn",
    schema=lambda letters, protocol: scores_schema("Clarity", letters, 1, 5),
    memory=lambda answers, letters: None,  # not remembered: the next turns' questions stay as they were
    description="how clear each reply was, 1-5, after every turn",
)
ONE_WORD = Instrument(
    name="one_word", template="one_word.j2", folder=TEMPLATES, scope="end",
    schema=lambda letters, protocol: per_letter("OneWord", letters, Annotated[str, Field(max_length=40)]),
    description="each assistant in one word",
)


def instruments() -> list[Instrument]:
    """This module's instruments (an entry point's callable: simlab registers what it returns)."""
    return [USE_AGAIN, CLARITY, ONE_WORD]
