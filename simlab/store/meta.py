"""A run's metadata: what is stored (secrets redacted, the command as typed), which keys a resume or
a shard must match (the experiment, prompts, models, seed), which describe the latest call (its
config), how an older run's meta reads today, and the field-by-field comparison that names every
difference."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from simlab.errors import InputError
from simlab.redaction import REDACTED, redact_fields

__all__ = [
    "LATEST_META",
    "LEGACY_INVOCATION_KEYS",
    "MATCHED_META",
    "REDACTED",
    "ConfigMismatchError",
    "added_instruments",
    "added_variants",
    "command_line",
    "diff_config",
    "jsonable",
    "latest_changes",
    "meta_as_today",
    "meta_differences",
    "now",
]

MATCHED_META = ("experiment", "prompt_hashes", "models", "seed", "instruments", "variant_prompts")
"""meta keys that must agree between a run and its resume, and between the shards of a merge
(when present in either): ``experiment`` is what defines the study (``simlab.config.Experiment``);
``variant_prompts``, the hashes of each simulator variant's own templates (a variant added by the
call is not compared);
``instruments``, the questions its sessions ask (compared by the added ones: see ``added_instruments``)."""
LATEST_META = ("config",)
"""meta keys that describe the call that last ran the run (``config``: the experiment with that
call's settings, e.g. concurrency): each resume replaces them and records what changed."""
LEGACY_INVOCATION_KEYS = ("concurrency", "limit", "out_dir", "human", "max_gen_error_rate", "repeats", "ablate_persona",
                          "pricing", "pricing_file", "budget_usd", "cache", "cache_unseeded")
"""The keys of a stored ``config`` that are the invocation's, in stores made before the meta held
the experiment on its own: such a store's experiment is its ``config`` without them (the prices and
the budget came later; a config rewritten in the old shape may hold them)."""


class ConfigMismatchError(InputError):
    """Resuming a run with a config that differs from the one it was created with."""

    def __init__(self, store_path: str | Path, differences: list[str]) -> None:
        self.differences = differences
        listing = "; ".join(differences)
        super().__init__(
            f"the run was created with a different config ({len(differences)} difference(s), "
            f"stored != new): {listing}. Resume with the original config or start a new run id.",
            file=store_path,
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _diff(old: Any, new: Any, path: str, out: list[str]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub}: <absent> != {_short(new[key])}")
            elif key not in new:
                out.append(f"{sub}: {_short(old[key])} != <absent>")
            else:
                _diff(old[key], new[key], sub, out)
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(old):
                out.append(f"{sub}: <absent> != {_short(new[i])}")
            elif i >= len(new):
                out.append(f"{sub}: {_short(old[i])} != <absent>")
            else:
                _diff(old[i], new[i], sub, out)
    # bool is an int in Python (True == 1); a flag turned into a number is still a change
    elif old != new or isinstance(old, bool) != isinstance(new, bool):
        out.append(f"{path or '<root>'}: {_short(old)} != {_short(new)}")


def diff_config(old: Any, new: Any, ignore: Iterable[str] = ()) -> list[str]:
    """Every field path where two JSON-like configs differ, as ``path: old != new``.

    ``ignore`` names top-level keys that may differ (e.g. concurrency on resume).

    >>> diff_config({"arms": [{"model": "a"}], "seed": 1}, {"arms": [{"model": "b"}], "seed": 1})
    ["arms[0].model: 'a' != 'b'"]
    """
    skip = set(ignore)
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        old = {k: v for k, v in old.items() if k not in skip}
        new = {k: v for k, v in new.items() if k not in skip}
    out: list[str] = []
    _diff(old, new, "", out)
    return out


def jsonable(value: Any) -> Any:
    """A JSON round trip (models dumped, tuples → lists) with secret-looking keys redacted."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    plain = json.loads(json.dumps(value, default=str))
    return redact_fields(plain)


def meta_as_today(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Stored meta as this simlab writes it: the old redaction marker read as today's, and a meta
    written before ``experiment`` was stored on its own given one (its ``config`` without
    ``LEGACY_INVOCATION_KEYS``), so an older run still resumes and merges.

    >>> meta_as_today({"config": {"seed": 1, "concurrency": 8}})["experiment"]
    {'seed': 1}
    """
    out: dict[str, Any] = _marked_as_today(dict(meta))
    config = out.get("config")
    if "experiment" not in out and isinstance(config, dict):
        out["experiment"] = {k: v for k, v in config.items() if k not in LEGACY_INVOCATION_KEYS}
    return out


def _variants(experiment: Any) -> dict[str, Any]:
    """A stored experiment's simulator variants by id (none for one ``[simulator]`` or an older run)."""
    listed = experiment.get("simulators") if isinstance(experiment, Mapping) else None
    return {str(v.get("id")): v for v in listed or [] if isinstance(v, Mapping)}


def added_variants(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The ids of the simulator variants ``new``'s experiment lists and the stored run's does not:
    a resume runs their sessions (the others' are matched by ``meta_differences``)."""
    old_v = _variants(meta_as_today(stored).get("experiment"))
    new_v = _variants(jsonable(new.get("experiment")))
    return [v for v in new_v if v not in old_v]


def _variant_differences(old_exp: Any, new_exp: Any) -> list[str]:
    """Each stored variant that the new experiment removes or defines otherwise, named by its id.
    A run with one ``[simulator]`` stays one: variants cannot be added to it (its sessions have no
    variant in their ids), nor a variant run turned into one."""
    old_v, new_v = _variants(old_exp), _variants(new_exp)
    if bool(old_v) != bool(new_v):
        had = "[[simulators]] variants " + ", ".join(map(str, old_v)) if old_v else "one [simulator]"
        has = "[[simulators]] variants " + ", ".join(map(str, new_v)) if new_v else "one [simulator]"
        return [f"simulators: the run has {had}, this config {has} (start a new run: --out elsewhere or "
                "another name)"]
    out = []
    for vid, old in old_v.items():
        if vid not in new_v:
            out.append(f"simulators: variant {vid!r} is in the run but not in this config (a variant cannot be "
                       "removed from a run: keep it, or start a new run)")
        else:
            out += [f"simulators[{vid}].{d}" for d in diff_config(old, new_v[vid])]
    return out


def meta_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Every difference in ``MATCHED_META`` between a stored run and a new call: any forbids a resume.
    Simulator variants the new call adds are not differences (``added_variants``): a removed one, or
    one defined otherwise under the same id, is (named by its id)."""
    old_meta = meta_as_today(stored)
    new_meta = meta_as_today({k: jsonable(v) for k, v in new.items()})
    added = set(added_variants(stored, new))
    if isinstance(new_meta.get("models"), dict):  # an added variant's models are new, not changed
        new_meta["models"] = {k: v for k, v in new_meta["models"].items()
                              if not (k.startswith("simulator:") and k.split(":")[1] in added)}
    differences: list[str] = []
    for key in MATCHED_META:
        if key not in old_meta and key not in new_meta:
            continue
        old_v, new_v = old_meta.get(key), new_meta.get(key)
        if key == "variant_prompts":
            old_p = old_v if isinstance(old_v, dict) else {}
            new_p = {k: v for k, v in (new_v if isinstance(new_v, dict) else {}).items() if k not in added}
            differences += [f"simulators[{vid}].prompts: the variant's templates differ from the run's "
                            f"({', '.join(diff_config(old_p.get(vid), new_p.get(vid))) or 'none'})"
                            for vid in sorted(set(old_p) | set(new_p)) if old_p.get(vid) != new_p.get(vid)]
        elif key == "experiment" and isinstance(old_v, dict) and isinstance(new_v, dict):
            differences += _variant_differences(old_v, new_v)
            old_rest = {k: v for k, v in old_v.items() if k != "simulators"}
            new_rest = {k: v for k, v in new_v.items() if k != "simulators"}
            differences += diff_config(old_rest, new_rest)  # named by the field path alone, as in the user's file
        elif key == "instruments":
            old_added, new_added = added_instruments(old_v), added_instruments(new_v)
            if old_added != new_added:
                differences.append(f"instruments: the run's sessions asked {_listed(old_added)}, these would ask "
                                   f"{_listed(new_added)} (register the same instruments to resume, or start a new "
                                   "run: --out elsewhere or another name)")
        else:
            differences += diff_config({key: old_v}, {key: new_v})
    return differences


def added_instruments(value: Any) -> list[str]:
    """The instruments beyond the built-ins in a meta's ``instruments`` (``name (scope, template hash)``),
    sorted. A run recorded before instruments were registered (no ``instruments``) asked the built-ins
    only; the built-ins' templates are matched by ``prompt_hashes``."""
    if not isinstance(value, list):
        return []
    return sorted(f"{i.get('name')} ({i.get('scope')}, {i.get('hash')})" for i in value
                  if isinstance(i, Mapping) and not i.get("builtin"))


def _listed(added: list[str]) -> str:
    return "the built-in instruments only" if not added else "the built-ins and " + ", ".join(added)


def latest_changes(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What a resume changes in ``LATEST_META`` (e.g. ``concurrency: 4 != 64``)."""
    out: list[str] = []
    for key in LATEST_META:
        if key in new:
            out += diff_config(_marked_as_today(stored.get(key)), jsonable(new[key]))
    return out


LEGACY_REDACTED = "<redacted>"  # the marker stores written before the redaction had one marker


def _marked_as_today(value: Any) -> Any:
    """Stored meta with the old redaction marker read as today's, so an older run still resumes."""
    if value == LEGACY_REDACTED:
        return REDACTED
    if isinstance(value, dict):
        return {k: _marked_as_today(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_marked_as_today(v) for v in value]
    return value


def now() -> str:
    """The current UTC time as ISO 8601 to the second (the store's timestamps)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def command_line() -> str:
    """The command as the user typed it: ``python -m simlab.run --limit 1``, ``simlab run …``,
    not the path of the module file that ``sys.argv[0]`` holds."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    if len(argv) >= 3 and argv[1] == "-m":  # python -m simlab.run …
        return shlex.join([Path(argv[0]).name, *argv[1:]])
    if len(argv) >= 2 and Path(argv[1]).name == "simlab":  # the console script (a shebang runs python on it)
        return shlex.join(["simlab", *argv[2:]])
    return shlex.join([Path(argv[0]).name, *argv[1:]])
