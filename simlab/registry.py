"""Named registries of the parts users can add without editing simlab: instruments (the questions
put to the simulated participant), fidelity analyses and endpoint kinds.

A part is registered from Python (``REGISTRY.register(part)``) or by a package's entry point in
the registry's group (``simlab.instruments``, ``simlab.analyses``, ``simlab.backends``): the entry
point names a module (imported: it registers on import) or a callable (called with no argument;
it registers, or returns the part, or an iterable of parts, to register). Entry points are loaded
once, the first time a registry is read. A bad registration (a duplicate name, a part its
registry's ``check`` refuses, an entry point that fails to import) raises ``RegistrationError``
naming the part and the cause, before any model call; the CLIs turn it into exit status 2.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from types import ModuleType
from typing import Generic, Protocol, TypeVar

from simlab.errors import ConfigError

__all__ = ["Named", "Registry", "RegistrationError", "require_model"]


class RegistrationError(ConfigError):
    """A part that cannot be registered: names the registry, the part (or entry point) and the cause."""


class Named(Protocol):
    """What a registry holds: anything with a ``name``."""

    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Parts of one kind by name, in registration order (built-ins first).

    ``kind``: what the parts are, for messages ("instrument"). ``group``: the entry-point group
    read on first use. ``check``: called with each new part; raises ``ValueError``/``TypeError``
    with the cause when the part is unusable (a schema that is not a JSON schema, …).
    """

    def __init__(self, kind: str, group: str, check: Callable[[T], None] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._check = check
        self._parts: dict[str, T] = {}
        self._entry_points_loaded = False
        self._lock = threading.RLock()

    def register(self, part: T, *, replace: bool = False) -> T:
        """Add ``part``; a second part of the same name is refused unless ``replace`` (tests, overrides)."""
        name = getattr(part, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"{self.kind} {part!r}: has no name (a non-empty str 'name')")
        with self._lock:
            if name in self._parts and not replace and self._parts[name] is not part:
                raise RegistrationError(f"{self.kind} '{name}': registered twice (a {self.kind} of that name exists; "
                                        "choose another name, or pass replace=True to override it)")
            if self._check is not None:
                try:
                    self._check(part)
                except (ValueError, TypeError, LookupError) as exc:
                    raise RegistrationError(f"{self.kind} '{name}': {exc}") from exc
            self._parts[name] = part
        return part

    def unregister(self, name: str) -> None:
        """Remove a part (tests that register their own); unknown names are ignored."""
        with self._lock:
            self._parts.pop(name, None)

    def load_entry_points(self) -> None:
        """Import this registry's entry points once. A failing one raises ``RegistrationError`` naming it."""
        with self._lock:
            if self._entry_points_loaded:
                return
            self._entry_points_loaded = True
            for ep in metadata.entry_points(group=self.group):
                where = f"entry point '{ep.name} = {ep.value}' (group {self.group}"
                dist = getattr(ep, "dist", None)
                where += f", package {dist.name})" if dist is not None else ")"
                try:
                    loaded = ep.load()
                except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see, named
                    raise RegistrationError(f"{where} failed to import: {type(exc).__name__}: {exc}") from exc
                if callable(loaded) and not hasattr(loaded, "name"):
                    try:
                        loaded = loaded()
                    except RegistrationError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - as above
                        raise RegistrationError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
                for part in _parts_of(loaded, where):
                    self.register(part)  # type: ignore[arg-type] # the registry's check types it

    def reload_entry_points(self) -> None:
        """Read the entry points again (after installing a package in the same process)."""
        with self._lock:
            self._entry_points_loaded = False
        self.load_entry_points()

    def get(self, name: str) -> T:
        """The part called ``name``; a clear ``RegistrationError`` listing the known names otherwise."""
        self.load_entry_points()
        try:
            return self._parts[name]
        except KeyError:
            known = ", ".join(self._parts) or "none"
            raise RegistrationError(f"unknown {self.kind} '{name}' (registered: {known})") from None

    def __contains__(self, name: object) -> bool:
        self.load_entry_points()
        return name in self._parts

    def __iter__(self) -> Iterator[T]:
        self.load_entry_points()
        return iter(list(self._parts.values()))

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self.load_entry_points()
        return list(self._parts)

    def __len__(self) -> int:
        self.load_entry_points()
        return len(self._parts)


def _parts_of(loaded: object, where: str) -> Iterable[Named]:
    # a module registers on import; a part, or parts, returned by a callable are registered here
    if loaded is None or isinstance(loaded, ModuleType):
        return ()
    if hasattr(loaded, "name"):
        return (loaded,)
    if isinstance(loaded, Iterable) and not isinstance(loaded, (str, bytes)):
        return list(loaded)
    raise RegistrationError(f"{where} gave {type(loaded).__name__} {loaded!r}: expected a module, a part with a "
                            "'name', parts, or a callable that registers")


def require_model(model: object, base: type, what: str, why: str = "") -> None:
    """A registry check: ``model`` is a pydantic model class derived from ``base`` (``TypeError``
    naming ``what`` and ``base``, then ``why`` the base is needed, otherwise)."""
    from pydantic import BaseModel

    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{what} {model!r} is not a pydantic model")
    if not issubclass(model, base):
        raise TypeError(f"{what} {model.__name__} does not derive from {base.__module__}.{base.__qualname__}"
                        + (f" ({why})" if why else ""))
