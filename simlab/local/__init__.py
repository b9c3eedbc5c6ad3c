"""The servers simlab starts itself: the embedded llama.cpp server (SmolLM2-135M-Instruct) and vLLM
from a launch table. Imports point one way: ``process`` (ports, exits, probes) → ``server``
(llama.cpp) and ``launch`` (vLLM) → ``fleet`` (a run's servers)."""

from simlab.local.fleet import EmbeddedBackends, local_aliases, serving
from simlab.local.process import LocalBackendError
from simlab.local.server import DEFAULT_ALIAS, LocalServer, find_model

__all__ = ["DEFAULT_ALIAS", "EmbeddedBackends", "LocalBackendError", "LocalServer", "find_model", "local_aliases", "serving"]
