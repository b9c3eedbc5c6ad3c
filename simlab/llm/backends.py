"""Endpoint kinds as registered parts: each ``Backend`` names its kind, its config type and how a
request reaches its servers (a transport). The client looks an endpoint's backend up by its config's
``kind``; ``Config.endpoints`` reads each ``[endpoints.<name>]`` table with the config type its
``kind`` names, so a kind registered from outside simlab (in Python, or by a package's entry point in
the ``simlab.backends`` group) is configured in TOML like the built-in ones.

Example:
    >>> from simlab.llm.backends import BACKENDS, endpoint_config
    >>> BACKENDS.names()[:4]
    ['local', 'vllm', 'openai', 'litellm']
    >>> endpoint_config({"kind": "vllm", "base_url": "http://127.0.0.1:8000/v1"}).dialect
    'json_schema'
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, get_args

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from simlab.llm.config import (
    Dialect,
    EndpointConfig,
    LitellmEndpoint,
    LocalEndpoint,
    OpenAIEndpoint,
    VllmEndpoint,
)
from simlab.llm.transport import HTTP, LitellmTransport
from simlab.registry import Registry, require_model

__all__ = ["BACKENDS", "AnyEndpoint", "Backend", "Transport", "TransportFactory", "backend_of", "endpoint_config"]


class Transport(Protocol):
    """How one replica of an endpoint is reached from one event loop.

    ``complete`` sends one request body (an OpenAI chat completion, or a completion of prompt
    embeddings when it holds ``prompt_embeds``) and returns the reply's JSON body (a dict; the text
    of a body that is not JSON). It raises what the client classifies: ``HTTPStatusError`` (or any
    exception with an int ``status_code``) for an HTTP error, ``TimeoutError``, ``ConnectionError``.
    """

    async def complete(self, body: dict[str, Any], timeout: float) -> Any: ...

    async def close(self) -> None: ...


class TransportFactory(Protocol):
    """Makes the transport of one replica: called on the event loop that will use it."""

    def __call__(self, config: Any, *, url: str, key: str, connections: int) -> Transport: ...


@dataclass(frozen=True)
class Backend:
    """One endpoint kind: its name (the ``kind`` in TOML), its config type and its transport.

    ``config`` is a subclass of ``EndpointConfig`` whose ``kind`` field is ``Literal[name]``; its
    class variables ``default_dialect`` and ``default_in_flight`` give the kind's structured-output
    dialect and its bound on requests in flight. ``transport`` makes a replica's transport from the
    endpoint's config, the replica's URL, the API key and its connection bound. ``url_optional``:
    with no URL configured or given, calls go out with ``url=""`` (the transport knows where, e.g.
    a hosted provider); otherwise such an endpoint is an error. ``prompt_embeds``: its servers take
    vLLM's ``prompt_embeds`` (soft-token arms).
    """

    name: str
    config: type[EndpointConfig]
    transport: TransportFactory
    url_optional: bool = False
    prompt_embeds: bool = False
    description: str = ""

    @property
    def dialect(self) -> str:
        """The structured-output dialect of this kind's servers."""
        return self.config.default_dialect

    @property
    def max_in_flight(self) -> int:
        """Requests in flight per server by default."""
        return self.config.default_in_flight


def _check(backend: Backend) -> None:
    if not isinstance(backend, Backend):
        raise TypeError(f"expected a simlab.llm.backends.Backend, got {type(backend).__name__}")
    model = backend.config
    require_model(model, EndpointConfig, "its config", "the client reads base_url, timeouts and retries from it")
    field = model.model_fields.get("kind")
    values = get_args(field.annotation) if field is not None and typing.get_origin(field.annotation) is typing.Literal else ()
    if values != (backend.name,):
        raise TypeError(f"its config {model.__name__} must declare kind: Literal[{backend.name!r}] (the field that "
                        f"picks the type), got {field.annotation if field is not None else 'no kind field'}")
    if field is None or field.default != backend.name:
        raise TypeError(f"its config {model.__name__}'s kind must default to {backend.name!r}")
    if not callable(backend.transport):
        raise TypeError(f"its transport {backend.transport!r} is not callable")
    if model.default_dialect not in get_args(Dialect):
        raise ValueError(f"its config's default_dialect {model.default_dialect!r} is not one of {get_args(Dialect)}")
    if not isinstance(model.default_in_flight, int) or model.default_in_flight < 1:
        raise ValueError(f"its config's default_in_flight must be a positive int, got {model.default_in_flight!r}")


BACKENDS: Registry[Backend] = Registry("endpoint kind", "simlab.backends", _check)
"""Every endpoint kind, built-ins first."""


def _http(config: Any, *, url: str, key: str, connections: int) -> Transport:
    return HTTP(url, key, connections)


def _litellm(config: Any, *, url: str, key: str, connections: int) -> Transport:
    return LitellmTransport(url, key)


BACKENDS.register(Backend("local", LocalEndpoint, _http,
                          description="the embedded llama.cpp server, started for the run (or one at base_url)"))
BACKENDS.register(Backend("vllm", VllmEndpoint, _http, prompt_embeds=True,
                          description="a vLLM server at base_url, or launched from a launch table"))
BACKENDS.register(Backend("openai", OpenAIEndpoint, _http, description="any OpenAI-compatible server at base_url"))
BACKENDS.register(Backend("litellm", LitellmEndpoint, _litellm, url_optional=True,
                          description="hosted providers through litellm"))


def backend_of(config: EndpointConfig) -> Backend:
    """The registered backend of an endpoint config (by its ``kind``)."""
    return BACKENDS.get(config.kind)


def _error(kind: str, message: str, loc: tuple[str, ...], value: Any) -> ValidationError:
    return ValidationError.from_exception_data("endpoint", [
        InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)])


def endpoint_config(value: Any) -> EndpointConfig:
    """An endpoint table read as its kind's config type (``kind`` missing: ``openai``).

    An unknown kind, or a field of another kind, is a ``ValidationError`` at that key that says so
    (``Config`` turns it into a ``ConfigError`` naming ``endpoints.<name>.<field>``)."""
    if isinstance(value, EndpointConfig):
        BACKENDS.get(value.kind)  # a config built in Python: its kind must be registered too
        return value
    if not isinstance(value, Mapping):
        raise _error("endpoint_type", f"an endpoint is a table of settings, got {type(value).__name__}", (), value)
    kind = value.get("kind", "openai")
    if not isinstance(kind, str) or kind not in BACKENDS:
        known = ", ".join(BACKENDS.names())
        raise _error("unknown_endpoint_kind", f"unknown endpoint kind {kind!r} (registered: {known})", ("kind",),
                     kind)
    model = BACKENDS.get(kind).config
    try:
        return model.model_validate(dict(value))
    except ValidationError as exc:
        for err in exc.errors():
            key = err["loc"][0] if err["type"] == "extra_forbidden" and len(err["loc"]) == 1 else None
            owners = [b.name for b in BACKENDS if key in b.config.model_fields]
            if isinstance(key, str) and owners:
                raise _error("wrong_kind_field", f"{key} is not a setting of kind '{kind}' endpoints "
                             f"(it is one of kind {', '.join(repr(o) for o in owners)})", (key,), value[key]) from None
        raise


class AnyEndpoint:
    """The type of ``Config.endpoints``' values: any registered kind's config, picked by ``kind``.

    Used in an annotation (``dict[str, Annotated[EndpointConfig, AnyEndpoint]]``): each value is read by
    ``endpoint_config`` and dumped by its own type.
    The JSON schema lists the kinds registered when it is made."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            endpoint_config,
            serialization=core_schema.plain_serializer_function_ser_schema(_dump, info_arg=True),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        kinds = [handler(b.config.__pydantic_core_schema__) for b in BACKENDS]
        return {"oneOf": kinds, "discriminator": {"propertyName": "kind"}}


def _dump(value: EndpointConfig, info: core_schema.SerializationInfo) -> Any:
    return value.model_dump(mode=info.mode, by_alias=bool(info.by_alias), exclude_none=bool(info.exclude_none))

