"""What model calls cost: a pricing table (USD per million input, output and cached-input tokens per
model, or a GPU-hour price per endpoint), litellm's offline cost map for the hosted models it knows,
and the ``Ledger`` that prices every reply as it arrives and holds a run to its budget.

A model that neither the table nor litellm's map prices is priced at $0 and listed as unpriced
(``Ledger.unpriced``); no price is ever guessed. litellm's map is read from the JSON file litellm
ships (the data ``litellm.model_cost`` holds with ``LITELLM_LOCAL_MODEL_COST_MAP=True``): no network,
and no import of litellm. It prices endpoints of kind ``litellm`` and ``openai`` (hosted APIs);
``vllm`` and ``local`` endpoints serve models on the user's own hardware, priced by the table alone.

Example:
    >>> table = PricingTable.model_validate({"models": {"m": {"input": 1.0, "output": 2.0}}})
    >>> rate = Pricing(table).rate("stub", "vllm", "m")
    >>> round(rate.cost(prompt_tokens=1_000_000, completion_tokens=500_000), 6), rate.source
    (2.0, 'table')
    >>> Pricing(table).rate("stub", "vllm", "other").source
    'unpriced'
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from simlab.errors import ConfigError, SimlabError
from simlab.llm.config import _Strict
from simlab.records import PriceSource

__all__ = ["BudgetExhausted", "EndpointPrice", "Ledger", "ModelPrice", "PriceSource", "Pricing", "PricingTable",
           "Rate", "litellm_cost_map", "load_pricing"]

Usd = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]


class ModelPrice(_Strict):
    """One model's token prices, in USD per million tokens."""

    input: Usd
    """USD per million input (prompt) tokens."""
    output: Usd
    """USD per million output (completion) tokens."""
    cached_input: Usd | None = None
    """USD per million input tokens the provider served from its prompt cache (None: the input price)."""


class EndpointPrice(_Strict):
    """An endpoint paid by the hour of its servers instead of by the token (your own GPUs)."""

    gpu_hour_usd: Usd
    """USD per hour of one server of the endpoint. A call is charged its share of that hour: its
    seconds over the number of requests the server runs at once (the endpoint's ``max_in_flight``)."""


class PricingTable(_Strict):
    """Prices a run uses (``[pricing]`` in a config, or a ``--pricing`` file of the same tables)."""

    models: dict[str, ModelPrice] = Field(default_factory=dict)
    """Token prices by model name (``<endpoint>/<model>`` for one endpoint's model only)."""
    endpoints: dict[str, EndpointPrice] = Field(default_factory=dict)
    """GPU-hour prices by endpoint name (every model that endpoint serves)."""
    litellm_map: bool = True
    """Price the hosted models of ``litellm`` and ``openai`` endpoints the table does not name by
    litellm's offline cost map."""

    def merged(self, other: PricingTable) -> PricingTable:
        """This table with ``other``'s prices added (``other`` wins where both name a model)."""
        return PricingTable(models={**self.models, **other.models}, endpoints={**self.endpoints, **other.endpoints},
                            litellm_map=self.litellm_map and other.litellm_map)


def load_pricing(path: str | Path) -> PricingTable:
    """A pricing file (TOML or JSON: ``[models."<name>"]`` and ``[endpoints.<name>]`` tables); a bad
    price is a ``ConfigError`` naming the file and the field (e.g. ``models.gpt-4o.input``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the pricing file: {exc}", file=p) from None
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}", file=p) from None
    return pricing_table(data, file=p)


def pricing_table(data: Any, *, file: str | Path | None = None, field: str = "") -> PricingTable:
    """``data`` validated as a ``PricingTable``; errors name ``file`` and the field under ``field``."""
    try:
        return PricingTable.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        where = ".".join(p for p in (field, loc) if p) or None
        raise ConfigError(f"{msg} (given: {err.get('input')!r})", file=file, field=where) from None


_litellm_map: dict[str, Any] | None = None
_map_lock = threading.Lock()


def litellm_cost_map() -> dict[str, Any]:
    """litellm's offline model cost map (``model_prices_and_context_window_backup.json`` in the
    installed litellm; ``litellm.model_cost`` holds the same with ``LITELLM_LOCAL_MODEL_COST_MAP``).
    Empty when litellm is not installed."""
    global _litellm_map
    with _map_lock:
        if _litellm_map is None:
            spec = importlib.util.find_spec("litellm")
            found: dict[str, Any] = {}
            if spec is not None and spec.origin is not None:
                path = Path(spec.origin).parent / "model_prices_and_context_window_backup.json"
                if path.exists():
                    found = json.loads(path.read_text(encoding="utf-8"))
            _litellm_map = found
        return _litellm_map


@dataclass(frozen=True)
class Rate:
    """How one model at one endpoint is charged: USD per token, or per server-second."""

    source: PriceSource
    input: float = 0.0
    output: float = 0.0
    cached_input: float = 0.0
    server_second: float = 0.0
    """USD per second of one request in flight (a GPU-hour price over the server's concurrency)."""

    def cost(self, prompt_tokens: int = 0, completion_tokens: int = 0, cached_tokens: int = 0,
             seconds: float = 0.0) -> float:
        """USD of one reply (``cached_tokens``: the share of ``prompt_tokens`` served from cache)."""
        cached = min(cached_tokens, prompt_tokens)
        return ((prompt_tokens - cached) * self.input + cached * self.cached_input
                + completion_tokens * self.output + seconds * self.server_second)


_UNPRICED = Rate("unpriced")
_HOSTED_KINDS = ("litellm", "openai")


class Pricing:
    """Finds the ``Rate`` of a model at an endpoint: the table's endpoint (GPU-hour) price, its
    ``<endpoint>/<model>`` or ``<model>`` entry, litellm's map (hosted kinds), else unpriced."""

    def __init__(self, table: PricingTable | None = None) -> None:
        self.table = table or PricingTable()
        self._rates: dict[tuple[str, str, str, int], Rate] = {}

    def rate(self, endpoint: str, kind: str, model: str, in_flight: int = 1) -> Rate:
        """The rate of ``model`` at ``endpoint`` (of ``kind``, running ``in_flight`` requests at once)."""
        key = (endpoint, kind, model, in_flight)
        found = self._rates.get(key)
        if found is None:
            found = self._rates[key] = self._find(endpoint, kind, model, in_flight)
        return found

    def _find(self, endpoint: str, kind: str, model: str, in_flight: int) -> Rate:
        gpu = self.table.endpoints.get(endpoint)
        if gpu is not None:
            return Rate("gpu_hour", server_second=gpu.gpu_hour_usd / 3600 / max(1, in_flight))
        price = self.table.models.get(f"{endpoint}/{model}") or self.table.models.get(model)
        if price is not None:
            cached = price.input if price.cached_input is None else price.cached_input
            return Rate("table", price.input / 1e6, price.output / 1e6, cached / 1e6)
        if self.table.litellm_map and kind in _HOSTED_KINDS:
            entry = _litellm_entry(model)
            if entry is not None:
                inp = float(entry.get("input_cost_per_token") or 0.0)
                out = float(entry.get("output_cost_per_token") or 0.0)
                read = entry.get("cache_read_input_token_cost")
                return Rate("litellm", inp, out, inp if read is None else float(read))
        return _UNPRICED


def _litellm_entry(model: str) -> dict[str, Any] | None:
    """The map's entry of ``model``: its own key, or ``<provider>/<key>`` when the entry is that provider's."""
    cost_map = litellm_cost_map()
    entry = cost_map.get(model)
    if entry is None and "/" in model:
        provider, rest = model.split("/", 1)
        candidate = cost_map.get(rest)
        if isinstance(candidate, dict) and candidate.get("litellm_provider") == provider:
            entry = candidate
    if not isinstance(entry, dict) or "input_cost_per_token" not in entry:
        return None
    return entry


class BudgetExhausted(SimlabError):
    """A call that would take the run's spend past its budget was not sent. Like an endpoint that
    stopped answering, it stops the run without recording the sessions in flight: they stay to do."""

    def __init__(self, budget_usd: float, spent_usd: float, needed_usd: float) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.needed_usd = needed_usd
        super().__init__(budget_usd, spent_usd, needed_usd)

    def __str__(self) -> str:
        return (f"the budget of ${self.budget_usd:.4f} would be crossed: ${self.spent_usd:.4f} spent, and the next "
                f"call may cost up to ${self.needed_usd:.4f}")


class Ledger:
    """Every reply's cost as it arrives, the run's spend, and its budget.

    Before each request the client ``hold``s the request's worst case (its prompt at one token per
    three characters plus 16, and ``max_tokens`` of output; a GPU-hour endpoint: its timeout); a
    request whose hold would take the spend, with every hold in flight, past ``budget_usd`` is not
    sent (``BudgetExhausted``). So the spend stays within the budget as long as no reply's prompt
    takes more tokens than that estimate. ``spent_before``: what earlier calls of the run spent.
    """

    def __init__(self, pricing: Pricing | None = None, *, budget_usd: float | None = None,
                 spent_before: float = 0.0) -> None:
        if budget_usd is not None and not (budget_usd > 0 and math.isfinite(budget_usd)):
            raise ConfigError(f"the budget must be a positive number of dollars, got {budget_usd!r}", field="budget_usd")
        self.pricing = pricing or Pricing()
        self.budget_usd = budget_usd
        self.spent_before = spent_before
        self.spent = 0.0
        """USD of the replies of this ledger's calls (every attempt that came back with usage)."""
        self.held = 0.0
        self.unpriced: dict[str, int] = {}
        """``<endpoint>/<model>`` → replies priced at $0 because nothing prices that model."""
        self.stopped: BudgetExhausted | None = None

    def hold(self, rate: Rate, kwargs: Mapping[str, Any], timeout_s: float) -> float:
        """Reserve the worst case of one request; raises ``BudgetExhausted`` when it does not fit."""
        if self.budget_usd is None:
            return 0.0
        if self.stopped is not None:
            raise self.stopped
        chars = sum(len(str(m.get("content", ""))) for m in kwargs.get("messages") or ())
        chars += len(str(kwargs.get("prompt_embeds", ""))) // 8
        worst = rate.cost(prompt_tokens=chars // 3 + 16, completion_tokens=int(kwargs.get("max_tokens") or 0),
                          seconds=timeout_s)
        if self.spent_before + self.spent + self.held + worst > self.budget_usd:
            self.stopped = BudgetExhausted(self.budget_usd, self.spent_before + self.spent, worst)
            raise self.stopped
        self.held += worst
        return worst

    def release(self, held: float) -> None:
        self.held = max(0.0, self.held - held)

    def charge(self, rate: Rate, endpoint: str, model: str, amount: float) -> None:
        """Add one reply's cost (and note a model nothing prices)."""
        self.spent += amount
        if rate.source == "unpriced":
            key = f"{endpoint}/{model}"
            self.unpriced[key] = self.unpriced.get(key, 0) + 1
