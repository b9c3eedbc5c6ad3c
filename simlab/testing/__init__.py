"""Offline testing aids: a scripted OpenAI-compatible server with fault injection.

Use it to test your own pipelines without a GPU or an API key.
"""

from simlab.testing.stub_server import Fault, Latency, RequestLog, StubServer, generate_from_schema

__all__ = ["Fault", "Latency", "RequestLog", "StubServer", "generate_from_schema"]
