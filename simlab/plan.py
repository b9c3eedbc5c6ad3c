"""The sessions of a study: each one a ``SessionSpec`` that owns its conversation id and seed.

An experiment fixes every session it can hold, participant × domain × repeat, with or without a
persona (and, for Sim-Judgement, one per human conversation judged): its id and its seed derive
from the experiment's seed and the session's own ids, here and nowhere else, so a resume, a
shard or a later call that adds repeats finds the same ids and draws the same letters. Which of
them one call runs is the invocation's choice (``plan_sessions``).

>>> from simlab._files import data_dir
>>> from simlab.personas import load_personas
>>> persona = load_personas(data_dir("personas") / "sample.jsonl")[0]
>>> spec = SessionSpec(persona=persona, domain="values", repeat=1, run_seed=0)
>>> spec.conversation_id
'sample01:values:r1'
>>> control = spec.model_copy(update={"no_persona": True})
>>> control.conversation_id, control.seed == spec.seed  # the control shares its session's seed
('sample01:values:r1:no_persona', True)

A simulator variant (``[[simulators]]``) meets the same sessions under its id: same seed (so the
same letters, display order, arm sampling seeds and BDM draw), its own conversation id and source.

>>> variant = spec.model_copy(update={"variant": "profile"})
>>> variant.conversation_id, variant.source, variant.seed == spec.seed
('sample01:values:r1@profile', 'sim_dynamic:profile', True)
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from simlab.config import Experiment
from simlab.personas import Persona
from simlab.schema import VARIANT_ID, Domain, Source, variant_source
from simlab.seeds import derive_seed

__all__ = ["JUDGEMENT_SUFFIX", "SessionSpec", "conversation_id", "plan_sessions", "unit_seed"]

JUDGEMENT_SUFFIX = "#sj"
"""Ends the conversation id of a Sim-Judgement session: ``<the human's conversation id>#sj``."""


def conversation_id(participant_id: str, domain: str, repeat: int = 0, *, no_persona: bool = False,
                    variant: str | None = None) -> str:
    """``participant:domain``, with ``:rN`` for repeat N ≥ 1, ``:no_persona`` for the control and
    ``@<variant>`` for a simulator variant's session (``@`` is in no variant id, so ids stay unique)."""
    return (f"{participant_id}:{domain}" + (f":r{repeat}" if repeat else "") + (":no_persona" if no_persona else "")
            + (f"@{variant}" if variant is not None else ""))


def unit_seed(run_seed: int, participant_id: str, domain: str, repeat: int = 0) -> int:
    """The conversation's seed (letters, order, sampling, BDM); the no-persona control shares it."""
    if repeat == 0:
        return derive_seed(run_seed, participant_id, domain)
    return derive_seed(run_seed, participant_id, domain, "repeat", repeat)


class SessionSpec(BaseModel):
    """One session of a study: who, about what, which repeat, with or without the persona.

    ``conversation_id`` and ``seed`` are derived here, the one place their formats live.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    persona: Persona
    """The simulated participant (``persona_id`` is the participant id)."""
    domain: Domain
    """The conversation's domain (its instruction template ``domains/<domain>.j2``)."""
    repeat: int = Field(0, ge=0)
    """Which run of this participant × domain (0 … repeats-1), each with its own seed."""
    no_persona: bool = False
    """The control: the simulator gets no persona (source ``sim_dynamic_no_persona``); same seed,
    letters and arms as the session with the persona."""
    run_seed: int = Field(ge=0, le=2**63 - 1)
    """The experiment's seed, from which the session's seed derives."""
    variant: str | None = Field(None, pattern=f"^{VARIANT_ID}$")
    """The simulator variant (``[[simulators]]``) that plays the participant; None: the one
    ``[simulator]``. It changes the conversation id and the source, never the seed."""
    judged: str | None = None
    """Sim-Judgement: the id of the human conversation the simulator reads as this participant
    (then ``repeat`` and ``no_persona`` do not apply)."""

    @property
    def participant_id(self) -> str:
        """The participant's id (the persona's)."""
        return self.persona.persona_id

    @property
    def conversation_id(self) -> str:
        """The session's id in every table: ``participant:domain[:rN][:no_persona][@variant]``, or
        ``<human conversation id>#sj`` for Sim-Judgement."""
        if self.judged is not None:
            return self.judged + JUDGEMENT_SUFFIX
        return conversation_id(self.persona.persona_id, self.domain, self.repeat, no_persona=self.no_persona,
                               variant=self.variant)

    @property
    def seed(self) -> int:
        """The session's seed: letters, display order, sampling seeds and the BDM draw derive from it."""
        if self.judged is not None:
            return derive_seed(self.run_seed, "sim_judgement", self.judged)
        return unit_seed(self.run_seed, self.persona.persona_id, self.domain, self.repeat)

    @property
    def source(self) -> Source:
        """The ``source`` its records are stored with."""
        if self.judged is not None:
            return "sim_judgement"
        return variant_source(self.variant, no_persona=self.no_persona)


def plan_sessions(experiment: Experiment, personas: Sequence[Persona], *, repeats: int = 1,
                  ablate_persona: bool = False) -> list[SessionSpec]:
    """The Sim-Dynamic sessions of ``experiment`` with these personas, repeats 0 … ``repeats``-1, and
    the no-persona controls with ``ablate_persona``: persona sessions first, then by repeat; each
    participant's sessions with every simulator variant together."""
    conditions = [False, True] if ablate_persona else [False]
    return [SessionSpec(persona=p, domain=d, repeat=r, no_persona=c, variant=v, run_seed=experiment.seed)
            for c in conditions for r in range(repeats) for p in personas for v in experiment.variant_ids
            for d in experiment.protocol.domains]
