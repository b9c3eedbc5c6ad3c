"""The one typed configuration of a simlab run, loaded from TOML.

Every field carries a docstring; unknown keys are errors (``extra="forbid"``), and
a validation error names the file and the field path (``arms[2].sampling.temperature``).

Examples:
    >>> from simlab.config import default_config
    >>> cfg = default_config()
    >>> [arm.id for arm in cfg.arms]
    ['GEN', 'PROMPT', 'SUMMARY', 'STYLE']
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from simlab._files import data_dir
from simlab.errors import ConfigError
from simlab.schema import DOMAINS, WTP_CAP, Domain

CONFIGS_DIR = data_dir("configs")

Dialect = Literal["json_schema", "json_object_schema"]
Rendering = Literal["demographics", "profile", "summary"]
Personalisation = Literal["none", "demographics", "profile", "summary"]


def _plain_types(annotation: Any) -> set[Any]:
    args = typing.get_args(annotation)
    return set().union(*(_plain_types(a) for a in args)) if args else {annotation}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1: `seed = true` would run with seed 1
        if isinstance(value, bool) and info.field_name:
            types = _plain_types(cls.model_fields[info.field_name].annotation)
            if bool not in types and types & {int, float}:
                raise ValueError("expected a number, not true/false")
        return value


class SamplingConfig(_Strict):
    """Decoding parameters sent with every request of one model role."""

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(256, ge=1, le=32768)
    """Upper bound on generated tokens per reply."""
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    """Backend sampling seed; None derives one from the run seed and the unit's ids."""
    stop: list[str] = Field(default_factory=list)
    """Stop sequences."""


class EndpointConfig(_Strict):
    """One OpenAI-compatible server (vLLM, a hosted API, or the embedded local server)."""

    kind: Literal["local", "vllm", "openai"] = "openai"
    """Backend kind: decides the structured-output dialect and defaults. ``local`` with no
    ``base_url`` starts the embedded llama.cpp server for the run."""
    base_url: str | None = None
    """Base URL ending in ``/v1``. None only for ``kind = "local"`` (embedded server)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself never goes in config)."""
    structured_output: Dialect | None = None
    """Override the dialect: ``json_schema`` (OpenAI, vLLM) or ``json_object_schema``
    (llama.cpp: ``{"type": "json_object", "schema": …}``). Default follows ``kind``."""
    max_in_flight: int | None = Field(None, ge=1)
    """Bound on concurrent requests to this endpoint (default 1 for local, 64 otherwise)."""
    rate_limit: float | None = Field(None, gt=0)
    """Requests per second allowed to this endpoint (None: unlimited)."""
    timeout_s: float = Field(120.0, gt=0)
    """Per-request timeout."""
    max_attempts: int = Field(5, ge=1, le=50)
    """Attempts per request for transient failures (429, 5xx, timeouts, connection errors)."""
    deadline_s: float = Field(600.0, gt=0)
    """Total time budget of one call including retries and backoff."""
    schema_attempts: int = Field(3, ge=1, le=20)
    """Attempts for a structured reply that fails its schema before it is recorded as a failure."""
    n_threads: int | None = Field(None, ge=1)
    """Embedded server only: llama.cpp threads per server (default 1: llama.cpp's worker threads
    spin while they wait, so several threads collapse when another process holds a core)."""
    requantize: Literal["iq4_nl", "q8_0", "none"] = "iq4_nl"
    """Embedded server only: serve the shipped GGUF requantized once (cached on disk) to this type.
    IQ4_NL (every tensor) runs llama.cpp's repacked CPU kernels and never its AMX path, which
    crashes on some Xeons: 1.6× the generation speed of Q8_0 in the safe mode there; Q8_0 suits
    a CPU whose fast mode works; "none" serves the shipped Q4_1 as it is."""
    replicas: int | None = Field(None, ge=1, le=64)
    """Embedded server only: how many servers to start (default: one per core, at most 4). Each
    session's calls stay on one replica, whose prompt cache holds its persona and transcript."""
    n_ctx: int = Field(8192, ge=512)
    """Embedded server only: context window in tokens."""

    @property
    def dialect(self) -> Dialect:
        if self.structured_output:
            return self.structured_output
        return "json_object_schema" if self.kind == "local" else "json_schema"

    @property
    def in_flight(self) -> int:
        if self.max_in_flight:
            return self.max_in_flight
        return 1 if self.kind == "local" else 64  # llama.cpp's server runs one request at a time

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL such as http://127.0.0.1:8000/v1, got {v!r}")
        return v

    @model_validator(mode="after")
    def _url_or_local(self) -> EndpointConfig:
        if self.base_url is None and self.kind != "local":
            raise ValueError("base_url is required unless kind = 'local'")
        return self


class ModelSpec(_Strict):
    """A client-side configuration of a served model: where, which, how to sample."""

    endpoint: str = "local"
    """Key into ``endpoints``."""
    model: str = "smollm2-135m"
    """Model id as the server names it (a vLLM LoRA adapter name, or the local alias)."""
    sampling: SamplingConfig = SamplingConfig()
    """Decoding parameters."""


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
    """Persona rendering given to the system prompt template as ``persona`` (none: no persona)."""
    description: str = ""
    """What this arm is, for the report."""


class SimulatorConfig(ModelSpec):
    """The model that plays the participant."""

    rendering: Rendering = "profile"
    """How the persona is rendered into the simulator's prompt."""
    judgement_max_tokens: int = Field(384, ge=16, le=8192)
    """Token bound for structured judgements (ratings of every arm need more room than a message)."""
    sampling: SamplingConfig = SamplingConfig(temperature=0.8, max_tokens=160)


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
    """User turns (including the opening) before the user may stop."""
    max_turns: int = Field(6, ge=1)
    """Hard cap on user turns."""
    context_budget_tokens: int = Field(6000, ge=256)
    """When an arm's history would exceed this, the conversation ends (max_turns_reached)."""
    wtp_max: float = Field(10.0, gt=0, le=WTP_CAP)
    """Upper end of the willingness-to-pay scale in dollars (at most the records' cap, $10)."""

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


class Config(_Strict):
    """A whole run: endpoints, the candidate arms, the simulator, the judge, the protocol."""

    name: str = Field("simlab", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    """Run name; the run directory is ``<out_dir>/<name>-<hash of config>`` (letters, digits,
    ``_.-``; no path separators)."""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    """Run seed: arm→letter maps, BDM draws and sampling seeds derive from it and the unit ids."""
    endpoints: dict[str, EndpointConfig] = Field(default_factory=lambda: {"local": EndpointConfig(kind="local")})
    """Servers by name."""
    arms: list[ArmConfig]
    """The candidate models (four in PRISM-X)."""
    simulator: SimulatorConfig = SimulatorConfig()
    """The simulated participant's model."""
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
    limit: int | None = Field(None, ge=1)
    """Use only the first N personas."""
    concurrency: int = Field(8, ge=1, le=100_000)
    """Sessions in flight at once (model calls are further bounded per endpoint)."""
    out_dir: str = "runs"
    """Where run directories are created."""
    human: str | None = None
    """Human data (directory in the record schema) to compare with in the run's report."""
    max_gen_error_rate: float = Field(0.1, ge=0, le=1)
    """Share of an arm's replies that may be error notices (its generation failed and the user
    saw a notice instead) before the run exits 1 and says so; the PRISM study saw about 6.7%."""

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
    def _endpoints_exist(self) -> Config:
        specs: list[tuple[str, ModelSpec]] = [(f"arms[{i}]", a) for i, a in enumerate(self.arms)]
        specs += [("simulator", self.simulator), ("judge", self.judge), ("summary", self.summary)]
        for where, spec in specs:
            if spec.endpoint not in self.endpoints:
                known = ", ".join(sorted(self.endpoints)) or "none"
                raise ValueError(f"{where}.endpoint: unknown endpoint {spec.endpoint!r} (known: {known})")
        return self

    def public_dict(self) -> dict[str, Any]:
        """The resolved config as stored with a run: plain data, no secrets (keys are env names)."""
        return self.model_dump(mode="json")


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


def api_key(endpoint: EndpointConfig) -> str:
    """The endpoint's API key from the environment (never stored)."""
    if endpoint.api_key_env:
        key = os.environ.get(endpoint.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {endpoint.api_key_env} is not set", field="api_key_env")
        return key
    return "sk-no-key-required"  # local servers ignore it; the openai client wants a value
