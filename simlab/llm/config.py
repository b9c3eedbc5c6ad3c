"""The model layer's configuration: an endpoint (one type per kind of server), one model spec and its sampling.

They live here, not in ``simlab.config``, so that the client depends on nothing above it;
``simlab.config`` re-exports them as part of the run's one typed configuration.
"""

from __future__ import annotations

import os
import typing
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from simlab.errors import ConfigError
from simlab.redaction import MIN_SECRET_LENGTH

__all__ = ["Dialect", "EndpointConfig", "LaunchConfig", "LitellmEndpoint", "LocalEndpoint", "ModelSpec", "OpenAIEndpoint",
           "SamplingConfig", "VllmEndpoint", "api_key", "check_key_length"]

Dialect = Literal["json_schema", "json_object_schema"]


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


class LaunchConfig(_Strict):
    """A vLLM server that simlab starts for the run (on a free 127.0.0.1 port) and stops at its end.

    The server is ``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs) of the
    GPU build or the CPU build alike; its log goes to the run directory as ``vllm-<endpoint>.log``.
    """

    model: str
    """Model folder or hub name (``--model``). A relative folder is relative to the working directory."""
    served_name: str | None = None
    """The name the arms' ``model`` uses for the base model (``--served-model-name``); None: ``model``."""
    lora_modules: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters declared at start: served name → adapter folder (``--enable-lora --lora-modules``)."""
    max_lora_rank: int = Field(16, ge=1, le=512)
    """The largest adapter rank the server reserves room for (``--max-lora-rank``)."""
    args: list[str] = Field(default_factory=list)
    """More ``vllm serve`` arguments, passed as given (e.g. ``["--max-model-len", "4096"]``)."""
    env: dict[str, str] = Field(default_factory=dict)
    """More environment for the server (e.g. ``VLLM_CPU_KVCACHE_SPACE = "2"`` on the CPU build)."""
    python: str | None = None
    """The Python interpreter that has vLLM installed; None: simlab's own."""
    startup_timeout_s: float = Field(600.0, gt=0)
    """How long the server may take to load and answer its first real request."""
    restarts: int = Field(2, ge=0, le=100)
    """How many times a run restarts this server when it dies mid-run, with backoff, before the run
    stops as for any dead backend; the restarts go in the run's metadata and report."""

    @model_serializer(mode="wrap")
    def _added_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("restarts") == _ADDED_FIELDS["restarts"]:
            del out["restarts"]  # at its default: the dump (and the run's hash) as before the field existed
        return out

    @field_validator("args")
    @classmethod
    def _own_flags(cls, v: list[str]) -> list[str]:
        for arg in v:
            flag = arg.split("=", 1)[0]
            if flag in ("--host", "--port", "--api-key", "--model", "--served-model-name", "--lora-modules"):
                why = ("the API key comes from the endpoint's api_key_env, never a command line"
                       if flag == "--api-key" else "simlab sets it from the launch table")
                raise ValueError(f"{flag} is not allowed in launch.args: {why}")
        return v

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if any(word in name.upper() for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
                raise ValueError(f"{name} looks like a secret, and a config is stored with every run: keep it in "
                                 "the environment (the endpoint's api_key_env names the API key's variable)")
        return v

    @field_validator("lora_modules")
    @classmethod
    def _adapter_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name or any(c.isspace() or c == "=" for c in name):
                raise ValueError(f"adapter name {name!r} must be one word without '='")
        return v

    @property
    def names(self) -> list[str]:
        """Every model name the server serves: the base model's, then the adapters'."""
        return [self.served_name or self.model, *self.lora_modules]


class EndpointConfig(_Strict):
    """What every endpoint has, whatever its kind: where its server is, its API key's variable, its
    bounds, timeouts and retries. Each kind is a subclass with ``kind: Literal["<name>"]`` and only its
    own fields more (``LocalEndpoint``, ``VllmEndpoint``, ``OpenAIEndpoint``, ``LitellmEndpoint``, and the
    kinds users register: ``simlab.llm.backends``)."""

    default_dialect: ClassVar[Dialect] = "json_schema"
    """The structured-output dialect of this kind's servers (``structured_output`` overrides it)."""
    default_in_flight: ClassVar[int] = 64
    """Requests in flight per server when ``max_in_flight`` is not set."""

    kind: str
    """Backend kind: decides the config's fields, the transport, the structured-output dialect and defaults."""
    base_url: str | None = None
    """Base URL ending in ``/v1``."""
    replica_urls: list[str] = Field(default_factory=list)
    """More base URLs serving the same models (e.g. one vLLM server per GPU node). Each stream of
    work (a conversation's simulator, each arm's thread) stays on one replica, so its prefix stays
    in that server's cache; new streams go to the replica with the fewest; ``max_in_flight``
    bounds each replica (every model it serves together); a replica that stops answering is left
    and its streams continue on the others."""
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
    dead_after_s: float = Field(30.0, gt=0)
    """How long nothing usable may come back from this endpoint before it counts as dead and the run
    stops (its sessions in flight stay to do). The window starts at the endpoint's first request, so
    a server that never answers stops the run after it too. A call whose retries all met a server
    that is not answering (refused, timeouts, 502/503/504) or answers in no usable shape, with no
    other call answered meanwhile, keeps probing until a reply comes or the window ends: a flaky
    server that still answers most requests never stops a run, and a call that fails while others
    are answered is a failed call, recorded with its reason."""

    @property
    def dialect(self) -> Dialect:
        """The structured-output dialect calls to this endpoint use."""
        return self.structured_output or self.default_dialect

    @property
    def in_flight(self) -> int:
        """The bound on requests in flight per server of this endpoint."""
        return self.max_in_flight or self.default_in_flight

    @property
    def served_names(self) -> list[str] | None:
        """The model names this endpoint is known to serve (a server simlab launches), or None: unknown."""
        return None

    @property
    def where(self) -> str:
        """Where this endpoint's server is, in words (the run's plan)."""
        return self.base_url or "(no base_url)"

    @model_validator(mode="before")
    @classmethod
    def _a_kind_not_the_base(cls, data: Any) -> Any:
        if cls is EndpointConfig:
            raise ValueError("EndpointConfig is what every endpoint kind shares: make the kind's own type "
                             "(OpenAIEndpoint, VllmEndpoint, LocalEndpoint, LitellmEndpoint, …), or call "
                             "simlab.llm.backends.endpoint_config(table) to pick it by the table's kind")
        return data

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return v if v is None else _check_url(v)

    @field_validator("replica_urls")
    @classmethod
    def _http_urls(cls, v: list[str]) -> list[str]:
        return [_check_url(u) for u in v]

    @model_validator(mode="after")
    def _replicas_beside_base_url(self) -> EndpointConfig:
        if self.replica_urls and self.base_url is None:
            raise ValueError("replica_urls are more servers beside base_url: set base_url too")
        return self

    @property
    def urls(self) -> list[str]:
        """Every configured base URL of this endpoint (``base_url``, then ``replica_urls``)."""
        return ([self.base_url] if self.base_url else []) + list(self.replica_urls)


# The fields one EndpointConfig held for every kind before each kind had its own type, at their
# defaults: a run's stored config (and the hash that names its directory) has them for every
# endpoint, so the built-in kinds read them back and write them out unchanged.
_SHARED_SHAPE: dict[str, Any] = {"n_threads": None, "requantize": "iq4_nl", "replicas": None, "n_ctx": 8192,
                                 "launch": None}
# Fields added after runs were stored: left out of the dump at their default, so a config that does
# not set them keeps the hash (and so the run directory) it had before they existed.
_ADDED_FIELDS: dict[str, Any] = {"dead_after_s": 30.0, "restarts": 2}


class _BuiltinEndpoint(EndpointConfig):
    """The built-in kinds: their dump keeps the one shape every endpoint had (see ``_SHARED_SHAPE``)."""

    @model_validator(mode="before")
    @classmethod
    def _stored_shape(cls, data: Any) -> Any:
        # another kind's field at the value the old shape stored for it is that shape, not a setting
        if isinstance(data, dict) and any(k in _SHARED_SHAPE and k not in cls.model_fields for k in data):
            return {k: v for k, v in data.items()
                    if k in cls.model_fields or k not in _SHARED_SHAPE or v != _SHARED_SHAPE[k]}
        return data

    @model_serializer(mode="wrap")
    def _shared_shape(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for key, value in _SHARED_SHAPE.items():
            out.setdefault(key, value)
        for key, value in _ADDED_FIELDS.items():
            if key in out and out[key] == value:
                del out[key]
        return out


class OpenAIEndpoint(_BuiltinEndpoint):
    """Any server that speaks the OpenAI API (a hosted API, vLLM or llama.cpp started by someone else):
    requests go straight to it as JSON POSTs."""

    kind: Literal["openai"] = "openai"
    """``openai``: an OpenAI-compatible server at ``base_url``."""

    @model_validator(mode="after")
    def _needs_url(self) -> OpenAIEndpoint:
        if self.base_url is None:
            raise ValueError("base_url is required unless kind = 'local' (or 'litellm', for a hosted provider), "
                             "or a [endpoints.<name>.launch] table starts a vLLM server")
        return self


class LitellmEndpoint(_BuiltinEndpoint):
    """A provider litellm supports (the arms' model ids are litellm's, e.g. ``anthropic/claude-…``)."""

    kind: Literal["litellm"] = "litellm"
    """``litellm``: calls go through litellm; ``base_url`` is optional (the provider's own by default)."""


class LocalEndpoint(_BuiltinEndpoint):
    """The embedded llama.cpp server (SmolLM2-135M-Instruct), started for the run when ``base_url`` is
    not set, or a llama.cpp server already running at ``base_url``."""

    default_dialect: ClassVar[Dialect] = "json_object_schema"
    default_in_flight: ClassVar[int] = 1  # llama.cpp's server runs one request at a time

    kind: Literal["local"] = "local"
    """``local``: with no ``base_url``, simlab starts the embedded llama.cpp server for the run."""
    n_threads: int | None = Field(None, ge=1)
    """llama.cpp threads per server (default 1: llama.cpp's worker threads spin while they wait,
    so several threads collapse when another process holds a core)."""
    requantize: Literal["iq4_nl", "q8_0", "none"] = "iq4_nl"
    """Serve the shipped GGUF requantized once (cached on disk) to this type. IQ4_NL (every tensor)
    runs llama.cpp's repacked CPU kernels and never its AMX path, which crashes on some Xeons:
    faster generation than Q8_0 in the safe mode there; Q8_0 suits a CPU whose fast mode works;
    "none" serves the shipped Q4_1 as it is."""
    replicas: int | None = Field(None, ge=1, le=64)
    """How many servers to start (default: one per core, at most 4). Each session's calls stay on
    one replica, whose prompt cache holds its persona and transcript."""
    n_ctx: int = Field(8192, ge=512)
    """Context window in tokens."""
    restarts: int = Field(2, ge=0, le=100)
    """How many times a run restarts an embedded server (a replica) that dies mid-run, with backoff,
    before the run stops as for any dead backend; the restarts go in the run's metadata and report.
    A server at ``base_url`` (not started by simlab) is never restarted."""

    @property
    def where(self) -> str:
        return self.base_url or "embedded llama.cpp"

    @property
    def embedded(self) -> bool:
        """simlab starts the embedded server for this endpoint (no ``base_url``)."""
        return self.base_url is None


class VllmEndpoint(_BuiltinEndpoint):
    """A vLLM server: at ``base_url``, or started by simlab from a ``launch`` table."""

    kind: Literal["vllm"] = "vllm"
    """``vllm``: OpenAI ``json_schema`` structured output; prompt embeddings (soft tokens) allowed."""
    launch: LaunchConfig | None = None
    """Start this vLLM server for the run instead of using one at ``base_url``."""

    @property
    def served_names(self) -> list[str] | None:
        return self.launch.names if self.launch is not None else None

    @property
    def where(self) -> str:
        return self.base_url or (f"vLLM launched from {self.launch.model}" if self.launch else "(no base_url)")

    @model_validator(mode="after")
    def _url_or_launch(self) -> VllmEndpoint:
        if self.launch is not None:
            if self.base_url is not None or self.replica_urls:
                raise ValueError("a launch table starts its own server on a free port: remove base_url/replica_urls")
        elif self.base_url is None:
            raise ValueError("base_url is required unless kind = 'local' (or 'litellm', for a hosted provider), "
                             "or a [endpoints.<name>.launch] table starts a vLLM server")
        return self


def _check_url(v: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL such as http://127.0.0.1:8000/v1, got {v!r}")
    return v


class ModelSpec(_Strict):
    """A client-side configuration of a served model: where, which, how to sample."""

    endpoint: str = "local"
    """Key into ``endpoints``."""
    model: str = "smollm2-135m"
    """Model id as the server names it (a vLLM LoRA adapter name, or the local alias)."""
    sampling: SamplingConfig = SamplingConfig()
    """Decoding parameters."""


def check_key_length(variable: str, key: str, *, field: str) -> None:
    """Refuse an API key too short to be scrubbed from stored text (``simlab.redaction.MIN_SECRET_LENGTH``)."""
    if len(key) < MIN_SECRET_LENGTH:
        raise ConfigError(f"environment variable {variable} holds an API key of {len(key)} characters: simlab "
                          f"needs at least {MIN_SECRET_LENGTH}, because it removes the key from everything it stores "
                          "and a shorter one would match ordinary words too; give the server a longer key "
                          "(e.g. `openssl rand -hex 16`)", field=field)


def api_key(endpoint: EndpointConfig) -> str:
    """The endpoint's API key from the environment (never stored)."""
    if endpoint.api_key_env:
        key = os.environ.get(endpoint.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {endpoint.api_key_env} is not set", field="api_key_env")
        check_key_length(endpoint.api_key_env, key, field="api_key_env")
        return key
    return "sk-no-key-required"  # local servers ignore it; the openai client wants a value
