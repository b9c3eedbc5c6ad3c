"""Structured output: the ``response_format`` a pydantic model is sent as in each backend's dialect
(vLLM/OpenAI's ``json_schema``, llama.cpp's ``json_object`` with a schema), and the reply read back
and validated against the model."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from simlab.llm.config import Dialect

__all__ = ["inline_refs", "parse_structured", "response_format", "validation_reason"]

T = TypeVar("T", bound=BaseModel)


def response_format(schema: type[BaseModel], dialect: Dialect) -> dict[str, Any]:
    """The ``response_format`` body field for a pydantic model in a backend's dialect.

    vLLM and OpenAI take ``json_schema``; llama.cpp's server takes ``json_object`` with a
    ``schema`` key (it answers the ``json_schema`` form with a 500, and vLLM ignores a schema
    inside ``json_object``), hence two dialects. Building a JSON schema costs more CPU than sending
    the request: ``LLMClient`` builds each once and keeps it.
    """
    js = inline_refs(schema.model_json_schema())
    if dialect == "json_object_schema":
        return {"type": "json_object", "schema": _bounded_ints_as_enums(js)}
    return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": js, "strict": False}}


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace ``$ref``s to ``$defs`` by their definitions (small grammar-based decoders such
    as llama.cpp's handle flat schemas most reliably). Recursive models are not supported."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].split("/")[-1]])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)  # a dict: walk maps a dict (or the one its $ref names) to a dict
    return inlined


def _bounded_ints_as_enums(node: Any) -> Any:
    """llama.cpp's grammar ignores minimum/maximum (SmolLM wrote 478 on a 0–100 scale);
    it does enforce enums, so a bounded integer is sent as the list of its values.
    The reply is still validated against the original pydantic model."""
    if isinstance(node, list):
        return [_bounded_ints_as_enums(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _bounded_ints_as_enums(v) for k, v in node.items()}
    lo, hi = out.get("minimum"), out.get("maximum")
    if out.get("type") == "integer" and isinstance(lo, int) and isinstance(hi, int) and 0 <= hi - lo <= 1000:
        out = {k: v for k, v in out.items() if k not in ("type", "minimum", "maximum")}
        out["enum"] = list(range(lo, hi + 1))
    return out


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_structured(text: str, schema: type[T]) -> T:
    """Parse and validate a structured reply (a JSON object, possibly in a ```json fence)."""
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    return schema.model_validate_json(body)


def validation_reason(exc: ValidationError) -> str:
    """Why a reply broke its schema, in one line: the first error's field and message."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    if err["type"] == "json_invalid":
        return f"not valid JSON: {err['msg']}"
    return f"{loc}: {err['msg']}"
