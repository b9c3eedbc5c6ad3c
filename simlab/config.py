"""The one typed configuration of a simlab run, loaded from TOML: the ``Experiment`` (what defines
the study; hashed and stored with the run) and the ``Invocation`` (how one call runs it).

Every field carries a docstring; unknown keys are errors (``extra="forbid"``), and
a validation error names the file and the field path (``arms[2].sampling.temperature``).

Examples:
    >>> from simlab.config import default_config
    >>> cfg = default_config()
    >>> [arm.id for arm in cfg.arms]
    ['GEN', 'PROMPT', 'SUMMARY', 'STYLE']
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from simlab._files import data_dir
from simlab.errors import ConfigError

# the model layer's own types (an endpoint of each kind, one model spec, its sampling); re-exported here
from simlab.llm.backends import BACKENDS, AnyEndpoint
from simlab.llm.config import (
    Dialect,
    EndpointConfig,
    LaunchConfig,
    LitellmEndpoint,
    LocalEndpoint,
    ModelSpec,
    OpenAIEndpoint,
    SamplingConfig,
    VllmEndpoint,
    _Strict,
    api_key,
)
from simlab.llm.pricing import PricingTable
from simlab.schema import DOMAINS, VARIANT_ID, WTP_CAP, Domain, LetterMode, Memory, Rendering

__all__ = [
    "CONFIGS_DIR", "ArmConfig", "Config", "Dialect", "EndpointConfig", "Experiment", "Invocation", "JudgeConfig",
    "LaunchConfig", "LitellmEndpoint", "LocalEndpoint", "ModelSpec", "OpenAIEndpoint", "Personalisation",
    "SoftTokensConfig", "VllmEndpoint",
    "ProtocolConfig", "Rendering", "SamplingConfig", "SimulatorConfig", "SummaryConfig", "TurnModelConfig",
    "VariantConfig", "api_key", "default_config",
    "experiment_hash", "load_config", "parse_config",
]

CONFIGS_DIR = data_dir("configs")

Personalisation = Literal["none", "demographics", "profile", "summary", "soft_tokens"]


class SoftTokensConfig(_Strict):
    """Per-participant soft tokens (P-DPO) sent to vLLM as prompt embeddings (simlab.llm.soft_tokens)."""

    embeddings: str
    """The soft-token file (safetensors: ``e0`` and either the bank ``V`` + ``w`` or ``e``; the
    participant ids in its metadata). Relative to the working directory."""
    base_model: str
    """The base model's folder: its tokenizer and chat template, and its input-embedding matrix
    (the only tensor read, memory-mapped)."""


class ArmConfig(ModelSpec):
    """One candidate model shown to the simulated user under a letter."""

    id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,32}$")
    """Arm name used in every table (e.g. GEN, PROMPT, DPFT, PPFT). Never shown to the user."""
    system_prompt: str | None = "arms/generic.j2"
    """Template in ``prompts/`` for the arm's system prompt, or None for no system prompt
    (a relative path inside the prompt folder: no ``..``, not absolute)."""

    @field_validator("system_prompt")
    @classmethod
    def _inside_prompts(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = v.replace("\\", "/").split("/")
        if not v.strip() or v.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise ValueError(f"must name a template inside the prompt folder (e.g. arms/generic.j2), got {v!r}")
        return v
    personalisation: Personalisation = "none"
    """Persona rendering given to the system prompt template as ``persona`` (none: no persona);
    ``soft_tokens``: the participant's soft tokens prepended to the prompt (needs ``soft_tokens``)."""
    soft_tokens: SoftTokensConfig | None = None
    """With ``personalisation = "soft_tokens"``: where the soft tokens and the base model are."""
    description: str = ""
    """What this arm is, for the report."""

    @model_validator(mode="after")
    def _soft_tokens_table(self) -> ArmConfig:
        if (self.personalisation == "soft_tokens") != (self.soft_tokens is not None):
            raise ValueError("personalisation = 'soft_tokens' and a soft_tokens table go together")
        return self


class SimulatorConfig(ModelSpec):
    """The model that plays the participant."""

    rendering: Literal["demographics", "profile", "summary", "none"] = "profile"
    """How the persona is rendered into the simulator's prompt; ``none``: the simulator gets no
    persona (a variant that plays everyone alike, e.g. beside persona variants in ``[[simulators]]``)."""
    memory: Memory = "session"
    """``session``: each question the participant answers shows their own earlier answers in this
    conversation (opening choice, turn ratings, stop decisions, rankings; by letter, never an arm's
    name), as a person remembers them. ``none``: every question stands alone."""
    judgement_max_tokens: int = Field(384, ge=16, le=8192)
    """Token bound for structured judgements (ratings of every arm need more room than a message)."""
    sampling: SamplingConfig = SamplingConfig(temperature=0.8, max_tokens=160)


class TurnModelConfig(ModelSpec):
    """A variant's turn model: the model that writes the participant's messages (the opening and
    every next message) when another model answers the questions (a trained user model such as
    UserLM-8b writes turns but answers no JSON schema)."""

    sampling: SamplingConfig = SamplingConfig(temperature=0.8, max_tokens=160)
    end_marker: str | None = Field(None, min_length=1)
    """The turn model's end-of-conversation marker (e.g. ``"<|endconversation|>"``): a next message
    that holds it is the participant's stop decision (the conversation ends there, stop reason
    ``user_ended``; that message is never shown to the arms) and the stop question is not asked.
    In the opening and before ``protocol.min_turns`` the participant may not stop: the marker is cut
    from the message (a message left empty is retried, then fails the session as an empty message)."""


class VariantConfig(SimulatorConfig):
    """One simulator variant of ``[[simulators]]``: a whole simulator set-up under an id, whose
    sessions are stored as source ``sim_dynamic:<id>`` (conversation ids ``…@<id>``)."""

    id: str = Field(pattern=f"^{VARIANT_ID}$")
    """The variant's name in sources and conversation ids (letters, digits, ``_``, ``-``)."""
    prompts: str | None = None
    """A folder of templates searched before simlab's for this variant's simulator prompts
    (``simulator/system.j2``, ``simulator/opening.j2``, ``simulator/next_message.j2``, and the
    questions' templates of instruments without a folder of their own). Relative to the working
    directory."""
    turns: TurnModelConfig | None = None
    """The turn model (``[simulators.turns]``), when the messages come from another model than the
    judgements; None: this variant's model writes both."""

    @field_validator("prompts")
    @classmethod
    def _folder(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_dir():
            raise ValueError(f"prompt folder {v!r} is not a directory")
        return v


class JudgeConfig(ModelSpec):
    """The LLM judge of the autograder."""

    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=200)
    rationale: bool = True
    """Ask for a short rationale before each score (stored with it). False asks for the score
    alone: about 10 output tokens per grade instead of 60, for a small local judge whose
    rationales add time and no insight (the embedded quickstart config turns it off)."""


class SummaryConfig(ModelSpec):
    """The model that writes persona summaries (PROTOCOL §3)."""

    sampling: SamplingConfig = SamplingConfig(temperature=0.2, max_tokens=300)
    cache_dir: str = "runs/.summaries"
    """Where summary artefacts are cached and reused across runs."""


class ProtocolConfig(_Strict):
    """The PRISM-X session protocol's knobs (PROTOCOL §2)."""

    domains: list[Domain] = Field(default_factory=lambda: list(DOMAINS))  # type: ignore[arg-type]
    """Domains each participant talks about (one conversation with all arms per domain)."""
    min_turns: int = Field(2, ge=1)
    """User turns (including the opening) before the user may stop. From then on, after rating
    each turn, the participant answers a separate stop question (instrument ``stop``)."""
    max_turns: int = Field(6, ge=1)
    """Hard cap on user turns."""
    letters: LetterMode = "by_position"
    """``by_position``: the arm shown first is A, the second B, …; ``independent``: the letters are a
    second permutation drawn apart from the display order, so a label bias (preferring "A") and an
    order bias (preferring what is shown first) can be told apart."""
    context_budget_tokens: int = Field(6000, ge=256)
    """When an arm's history would exceed this, the conversation ends (max_turns_reached)."""
    wtp_max: float = Field(10.0, gt=0, le=WTP_CAP)
    """Upper end of the willingness-to-pay scale in dollars (at most the records' cap, $10); bids
    are in dollars and cents."""

    @field_validator("domains")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one domain is required")
        if len(set(v)) != len(v):
            raise ValueError("domains must not repeat")
        return v

    @model_validator(mode="after")
    def _turns(self) -> ProtocolConfig:
        if self.min_turns > self.max_turns:
            raise ValueError(f"min_turns ({self.min_turns}) exceeds max_turns ({self.max_turns})")
        return self


def _embedded() -> EndpointConfig:
    return LocalEndpoint()


class Experiment(_Strict):
    """What defines a study: the candidate arms, the protocol, the simulator, the judge, the
    persona set, the seed. Hashed (``experiment_hash``) into the run directory's name and stored in
    the run's meta; a resume or a shard merge must have the same experiment. Every session a study
    can hold (participant × domain × repeat, with or without persona) has its id and seed fixed by
    it; which of them one call runs is the ``Invocation``'s choice.

    >>> from simlab.config import default_config
    >>> exp = default_config().experiment
    >>> exp.name, len(exp.arms), "concurrency" in type(exp).model_fields
    ('quickstart', 4, False)
    """

    name: str = Field("simlab", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    """Run name; the run directory is ``<out_dir>/<name>-<hash of the experiment>`` (letters, digits,
    ``_.-``; no path separators)."""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    """Run seed: arm→letter maps, BDM draws and sampling seeds derive from it and the unit ids."""
    endpoints: dict[str, Annotated[EndpointConfig, AnyEndpoint]] = Field(
        default_factory=lambda: {"local": _embedded()})
    """Servers by name (what serves each model is part of the study: an adapter or a launch table);
    each table's ``kind`` (default ``openai``) picks its type among the registered endpoint kinds
    (``simlab.llm.backends``)."""
    arms: list[ArmConfig]
    """The candidate models (four in PRISM-X)."""
    simulator: SimulatorConfig = SimulatorConfig()
    """The simulated participant's model (one simulator, source ``sim_dynamic``)."""
    simulators: list[VariantConfig] = Field(default_factory=list)
    """Simulator variants (``[[simulators]]``, instead of ``[simulator]``): every variant meets the
    same participants, domains, repeats, seeds, arms and letters, each stored as its own source
    ``sim_dynamic:<id>``. Adding a variant to a run resumes it and runs only the new sessions."""
    judge: JudgeConfig = JudgeConfig()
    """The autograder's judge model."""
    summary: SummaryConfig = SummaryConfig()
    """The persona-summary writer."""
    protocol: ProtocolConfig = ProtocolConfig()
    """Session protocol."""
    personas: str = "personas/sample.jsonl"
    """Persona set: simlab JSONL, or a PRISM ``survey.jsonl`` beside its ``conversations.jsonl``."""
    holdout: str | None = None
    """File of conversation ids (one per line) held out as evaluation targets: excluded from the
    personas built for their participants (PROTOCOL §3)."""

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[ArmConfig]) -> list[ArmConfig]:
        if not 2 <= len(v) <= 10:
            raise ValueError(f"between 2 and 10 arms are needed, got {len(v)}")
        ids = [a.id for a in v]
        if len(set(ids)) != len(ids):
            raise ValueError(f"arm ids must be unique, got {ids}")
        return v

    @model_validator(mode="after")
    def _variants(self) -> Experiment:
        # a dump of a run's config holds the default simulator beside its variants: only a set-up refuses
        if self.simulators and self.simulator != SimulatorConfig():
            raise ValueError("simulators: give either one [simulator] table or [[simulators]] variants, not both")
        seen: dict[str, int] = {}
        for i, variant in enumerate(self.simulators):
            if variant.id in seen:
                raise ValueError(f"simulators[{i}].id: variant id {variant.id!r} is used twice "
                                 f"(also simulators[{seen[variant.id]}].id)")
            seen[variant.id] = i
        return self

    @property
    def variant_ids(self) -> list[str | None]:
        """The simulator variants' ids: ``[None]`` for the one ``[simulator]``."""
        return [v.id for v in self.simulators] or [None]

    def simulator_of(self, variant: str | None) -> SimulatorConfig:
        """The simulator of a variant (None: ``simulator``; a ``VariantConfig`` for an id)."""
        if variant is None:
            return self.simulator
        for v in self.simulators:
            if v.id == variant:
                return v
        raise KeyError(f"no simulator variant {variant!r} (variants: {', '.join(v.id for v in self.simulators)})")

    def simulator_specs(self) -> list[tuple[str, ModelSpec]]:
        """Every model spec that plays the participant, by its config path: ``simulator``, or each
        variant's (``simulators[i]``) and its turn model's (``simulators[i].turns``)."""
        if not self.simulators:
            return [("simulator", self.simulator)]
        out: list[tuple[str, ModelSpec]] = []
        for i, v in enumerate(self.simulators):
            out.append((f"simulators[{i}]", v))
            if v.turns is not None:
                out.append((f"simulators[{i}].turns", v.turns))
        return out

    @model_validator(mode="after")
    def _endpoints_exist(self) -> Experiment:
        specs: list[tuple[str, ModelSpec]] = [(f"arms[{i}]", a) for i, a in enumerate(self.arms)]
        specs += [*self.simulator_specs(), ("judge", self.judge), ("summary", self.summary)]
        for where, spec in specs:
            if spec.endpoint not in self.endpoints:
                known = ", ".join(sorted(self.endpoints)) or "none"
                raise ValueError(f"{where}.endpoint: unknown endpoint {spec.endpoint!r} (known: {known})")
            ep = self.endpoints[spec.endpoint]
            if getattr(spec, "soft_tokens", None) is not None and not BACKENDS.get(ep.kind).prompt_embeds:
                raise ValueError(f"{where}: soft tokens go to vLLM's prompt_embeds: its endpoint must be kind = 'vllm'")
            served = ep.served_names
            if served is not None and spec.model not in served:
                raise ValueError(f"{where}.model: {spec.model!r} is not served by the vLLM server that endpoint "
                                 f"{spec.endpoint!r} launches (it serves: {', '.join(served)})")
        return self

    @property
    def experiment(self) -> Experiment:
        """The study alone (on a ``Config``: without the invocation's settings)."""
        if type(self) is Experiment:
            return self
        return Experiment.model_validate({k: getattr(self, k) for k in Experiment.model_fields})

    def public_dict(self) -> dict[str, Any]:
        """The resolved model as stored with a run: plain data, no secrets (keys are env names)."""
        return self.model_dump(mode="json")


def experiment_hash(experiment: Experiment) -> str:
    """The 10 hex digits that name an experiment's run directory: a hash of everything it holds but
    its simulator variants (``simulators``: a resume checks each stored variant is unchanged).

    >>> from simlab.config import default_config
    >>> cfg = default_config()
    >>> experiment_hash(cfg) == experiment_hash(cfg.model_copy(update={"concurrency": 64}))
    True
    """
    data = experiment.experiment.public_dict()
    # the variants are left out: adding one to a run finds the same run (its sessions are added), and
    # a run with one [simulator] keeps the hash it had before variants existed
    data.pop("simulators", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


class _Settings(_Strict):
    """The settings of an invocation that a TOML config may also give (``Config`` holds them)."""

    limit: int | None = Field(None, ge=1)
    """Use only the first N personas (a later call may take more: their sessions are added)."""
    repeats: int = Field(1, ge=1, le=100)
    """Sessions per participant × domain to run, repeats 0 … K-1, each with its own seed (simulator
    test–retest; repeat 0 is the session a run without repeats makes, so a later call with more
    repeats adds sessions to the run)."""
    ablate_persona: bool = False
    """Also run every session with a simulator that gets no persona (source
    ``sim_dynamic_no_persona``; same seeds, letters and arms), the control that shows what the
    persona adds to each fidelity comparison; a later call may add them to a run made without."""
    concurrency: int = Field(8, ge=1, le=100_000)
    """Sessions in flight at once (model calls are further bounded per endpoint)."""
    out_dir: str = "runs"
    """Where run directories are created."""
    human: str | None = None
    """Human data (directory in the record schema) to compare with in the run's report."""
    max_gen_error_rate: float = Field(0.1, ge=0, le=1)
    """Share of an arm's replies that may be error notices (its generation failed and the user
    saw a notice instead) before the run exits 1 and says so; the PRISM study saw about 6.7%."""
    pricing: PricingTable = PricingTable()
    """Model prices (``[pricing.models."<model>"]``: ``input``, ``output``, ``cached_input`` in USD per
    million tokens; ``[pricing.endpoints.<name>]``: ``gpu_hour_usd``); models it does not name are priced
    by litellm's offline cost map (hosted kinds), else at $0 and listed as unpriced."""
    pricing_file: str | None = None
    """A pricing file (TOML or JSON, the tables of ``pricing``), read before any call; its prices win
    over ``pricing``'s."""
    cache: str | None = None
    """A response cache file (SQLite, shared across runs and processes): seeded requests are served
    from it when it holds them and stored in it when not (``simlab.llm.cache``). None: no cache."""
    cache_unseeded: bool = False
    """Also cache requests with no seed (a reply sampled once then stands for every later one)."""
    budget_usd: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Dollars the run may spend over all its calls (resumes included): a call that could take the
    spend past it is not sent, and the run stops as when a backend stops answering (sessions in flight
    stay to do; resume with a higher budget). None: no limit."""


class Invocation(_Settings):
    """How one call runs an experiment: which of its sessions to do now (``limit``, ``repeats``,
    ``ablate_persona``, ``shard``), how many at once, where the run goes, what to compare with.
    None of it changes a session's result: a later call with other settings resumes the same run
    (and with more repeats, more personas or the no-persona control, adds their sessions).

    >>> Invocation(concurrency=64, shard=(1, 4)).shard
    (1, 4)
    """

    shard: tuple[int, int] = (0, 1)
    """``(i, n)``: only the participants of shard i of n (a stable hash of the participant id);
    each shard writes its own run directory (``…-shard<i>of<n>``), merged with ``simlab store merge``."""
    progress: bool = True
    """Show a progress bar on stderr."""
    retry_failed: bool = False
    """Also redo the sessions recorded as failed by an earlier call (they are skipped otherwise)."""
    report: bool = True
    """Write the run's ``report.html`` at the end (kept when nothing it shows changed)."""

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[1] < 1 or not 0 <= v[0] < v[1]:
            raise ValueError(f"shard {v[0]}/{v[1]}: need 0 <= i < n")
        return v


class Config(_Settings, Experiment):
    """A whole run as a TOML file gives it: the ``Experiment`` (endpoints, the candidate arms, the
    simulator, the judge, the protocol, …) and the invocation settings a file may hold
    (``concurrency``, ``limit``, ``repeats``, …). ``experiment`` and ``invocation()`` split it."""

    def invocation(self, **options: Any) -> Invocation:
        """This file's invocation settings, with ``options`` (e.g. ``shard``, ``progress``) for the rest.

        >>> from simlab.config import default_config
        >>> default_config().invocation(shard=(0, 2)).concurrency
        6
        """
        return Invocation.model_validate({**{k: getattr(self, k) for k in _Settings.model_fields}, **options})

    @classmethod
    def of(cls, experiment: Experiment, invocation: _Settings | None = None) -> Config:
        """The config of an experiment run with ``invocation``'s settings (defaults without one)."""
        settings = {} if invocation is None else {k: getattr(invocation, k) for k in _Settings.model_fields}
        return cls.model_validate({**{k: getattr(experiment, k) for k in Experiment.model_fields}, **settings})


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_config(data: dict[str, Any], *, file: str | Path | None = None) -> Config:
    """Validate a config dict; errors name the file and the field path."""
    # an explicit [simulator] beside variants is refused even when it holds defaults (a config's own
    # dump, which lists the default simulator in full, still loads)
    if isinstance(data, dict) and data.get("simulators") and "simulator" in data and data["simulator"] != SimulatorConfig().model_dump(mode="json"):
        raise ConfigError("give either one [simulator] table or [[simulators]] variants, not both",
                          file=file, field="simulators")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        more = f" (and {len(exc.errors()) - 1} more errors)" if len(exc.errors()) > 1 else ""
        raise ConfigError(msg + more, file=file, field=_loc(loc) or None) from None


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a TOML config; None loads the embedded default (``configs/local.toml``)."""
    path = Path(path) if path is not None else CONFIGS_DIR / "local.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except UnicodeDecodeError as exc:
        at = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"not UTF-8 text (byte {exc.start + 1})", file=path, row=at) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python < 3.14 keeps the position only in the message: "... (at line 9, column 9)"
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = getattr(exc, "lineno", None) or (int(found.group(1)) if found else None)
        raise ConfigError(f"not valid TOML: {exc}", file=path, row=line) from None
    return parse_config(data, file=path)


def default_config() -> Config:
    """The embedded default: four demo arms on the local SmolLM2 server."""
    return load_config(CONFIGS_DIR / "local.toml")
