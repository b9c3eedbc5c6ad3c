"""Endpoint kinds as registered backends: the built-in kinds and their config types, a bad kind refused
at registration with its name and the cause, and the stored shape of the built-in kinds' configs
(which names existing runs' directories) unchanged."""

from __future__ import annotations

import json
from typing import ClassVar, Literal

import pytest
from pydantic import BaseModel

from simlab.config import CONFIGS_DIR, load_config, parse_config
from simlab.llm.backends import BACKENDS, Backend, backend_of, endpoint_config
from simlab.llm.config import EndpointConfig, LitellmEndpoint, LocalEndpoint, OpenAIEndpoint, VllmEndpoint
from simlab.registry import RegistrationError


def _http(config: object, *, url: str, key: str, connections: int):  # never called: registration fails first
    raise AssertionError("not reached")


def test_the_built_in_kinds_and_their_defaults() -> None:
    assert BACKENDS.names()[:4] == ["local", "vllm", "openai", "litellm"]
    url = "http://127.0.0.1:9/v1"
    cases = {"local": (LocalEndpoint, "json_object_schema", 1), "vllm": (VllmEndpoint, "json_schema", 64),
             "openai": (OpenAIEndpoint, "json_schema", 64), "litellm": (LitellmEndpoint, "json_schema", 64)}
    for kind, (model, dialect, in_flight) in cases.items():
        ep = endpoint_config({"kind": kind, "base_url": url})
        assert type(ep) is model and ep.dialect == dialect and ep.in_flight == in_flight
        assert backend_of(ep).config is model and backend_of(ep).dialect == dialect
    assert type(endpoint_config({"base_url": url})) is OpenAIEndpoint  # no kind: the OpenAI API, as before
    assert endpoint_config({"kind": "local", "structured_output": "json_schema"}).dialect == "json_schema"
    assert BACKENDS.get("litellm").url_optional and not BACKENDS.get("openai").url_optional
    assert [b.name for b in BACKENDS if b.prompt_embeds] == ["vllm"]


@pytest.mark.parametrize("table,field", [
    ({"kind": "local", "n_ctx": 0}, "n_ctx"), ({"kind": "local", "n_ctx": "big"}, "n_ctx"),
    ({"kind": "local", "requantize": "q2"}, "requantize"), ({"kind": "local", "replicas": 0}, "replicas"),
    ({"kind": "vllm", "base_url": "http://127.0.0.1:9/v1", "n_threads": 2}, "n_threads"),
    ({"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "launch": {"model": "m"}}, "launch"),
])
def test_a_kinds_own_fields_are_checked_and_another_kinds_named(table: dict, field: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        endpoint_config(table)
    assert err.value.errors()[0]["loc"] == (field,)


def test_the_shared_base_is_not_an_endpoint_of_its_own() -> None:
    with pytest.raises(ValueError, match="make the kind's own type"):
        EndpointConfig(kind="openai", base_url="http://127.0.0.1:9/v1")


class Loose(EndpointConfig):
    kind: str = "loose"


class OtherName(EndpointConfig):
    kind: Literal["other"] = "other"


class NotAnEndpoint(BaseModel):
    kind: Literal["plain"] = "plain"


class BadInFlight(EndpointConfig):
    default_in_flight: ClassVar[int] = 0
    kind: Literal["zero"] = "zero"


@pytest.mark.parametrize("backend,cause", [
    (Backend("vllm", VllmEndpoint, _http), "endpoint kind 'vllm': registered twice"),
    (Backend("plain", dict, _http), "endpoint kind 'plain': its config <class 'dict'> is not a pydantic model"),  # type: ignore[arg-type]
    (Backend("plain", NotAnEndpoint, _http), "endpoint kind 'plain': its config NotAnEndpoint does not derive from "  # type: ignore[arg-type]
     "simlab.llm.config.EndpointConfig"),
    (Backend("loose", Loose, _http), "endpoint kind 'loose': its config Loose must declare kind: Literal['loose']"),
    (Backend("mine", OtherName, _http), "endpoint kind 'mine': its config OtherName must declare kind: "
     "Literal['mine']"),
    (Backend("zero", BadInFlight, _http), "endpoint kind 'zero': its config's default_in_flight must be a positive"),
    (Backend("other", OtherName, "not callable"), "endpoint kind 'other': its transport 'not callable' is not "  # type: ignore[arg-type]
     "callable"),
], ids=["duplicate", "not-pydantic", "not-an-endpoint", "kind-not-literal", "literal-of-another-name",
        "bad-default", "transport"])
def test_a_bad_kind_is_refused_at_registration_with_its_name_and_cause(backend: Backend, cause: str) -> None:
    with pytest.raises(RegistrationError) as err:
        BACKENDS.register(backend)
    assert cause in str(err.value)
    assert BACKENDS.names()[:4] == ["local", "vllm", "openai", "litellm"] and backend.name not in BACKENDS.names()[4:]


# What every endpoint looked like in a run's stored config before each kind had its own type: all
# fields of every kind. Existing stores hold these; the run's hash (its directory's name) is made of them.
_STORED = {
    "kind": None, "base_url": None, "replica_urls": [], "api_key_env": None, "structured_output": None,
    "max_in_flight": None, "rate_limit": None, "timeout_s": 120.0, "max_attempts": 5, "deadline_s": 600.0,
    "schema_attempts": 3, "n_threads": None, "requantize": "iq4_nl", "replicas": None, "n_ctx": 8192, "launch": None,
}


@pytest.mark.parametrize("kind,more", [
    ("local", {"n_threads": 2, "replicas": 3, "n_ctx": 4096}),
    ("vllm", {"base_url": "http://127.0.0.1:8000/v1", "api_key_env": "VLLM_API_KEY", "rate_limit": 200.0}),
    ("vllm", {"launch": {"model": "m", "served_name": "base", "lora_modules": {}, "max_lora_rank": 16, "args": [],
                         "env": {}, "python": None, "startup_timeout_s": 600.0}}),
    ("openai", {"base_url": "http://127.0.0.1:1/v1", "replica_urls": ["http://127.0.0.1:2/v1"]}),
    ("litellm", {}),
])
def test_a_stored_endpoint_reads_back_and_dumps_as_it_was(kind: str, more: dict) -> None:
    stored = {**_STORED, "kind": kind, **more}
    ep = endpoint_config(stored)
    assert ep.kind == kind
    assert ep.model_dump(mode="json") == stored


def test_the_committed_configs_keep_their_run_directories() -> None:
    """The hashes main computed for these files before endpoint kinds had types: an existing run is
    found (and resumed) under the same directory name (local.toml's since its quickstart became 12
    participants × 1 domain, a different study)."""
    from simlab.runner import config_hash

    expected = {"local.toml": "421d144128", "vllm-cpu.toml": "f085674497", "vllm.toml": "b4ccc36aa1"}
    for name, digest in expected.items():
        config = load_config(CONFIGS_DIR / name)
        assert config_hash(config, config.personas, (0, 1)) == digest, name
        assert parse_config(json.loads(json.dumps(config.public_dict()))) == config
