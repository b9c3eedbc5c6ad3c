"""The embedded local backend (llama.cpp server with SmolLM2-135M-Instruct)."""

from simlab.local.server import (
    DEFAULT_ALIAS,
    EmbeddedBackends,
    LocalBackendError,
    LocalServer,
    find_model,
    local_aliases,
    serving,
)

__all__ = ["DEFAULT_ALIAS", "EmbeddedBackends", "LocalBackendError", "LocalServer", "find_model", "local_aliases", "serving"]
