"""Registries keyed by CLI name (STYLE.md convention 7).

One generic :class:`Registry` serves every kind of plugin: decoding strategies, preference
losses, rankers and eval tasks. Keys are the names users type on the command line. A
duplicate key raises, an unknown key raises with a "did you mean", and an entry may be
registered lazily as a ``"module:attr"`` string so that importing the registry stays cheap.
Third-party packages add entries through the ``contrastkit.<kind>`` entry-point groups, e.g.::

    [project.entry-points."contrastkit.decoders"]
    my-search = "my_pkg.search:MY_STRATEGY"

Apart from the shared error leaf ``contrastkit.errors``, this module imports nothing of
contrastkit's (see STYLE.md, "Which way the imports run").
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

from contrastkit.errors import UsageError, did_you_mean

T = TypeVar("T")

__all__ = ["Registry", "RegistryError", "did_you_mean", "DECODERS", "LOSSES", "RANKERS", "TASKS", "TRAINERS"]


class RegistryError(UsageError, KeyError):
    """An unknown or duplicate registry key; a :class:`UsageError`, so the CLI reports it with exit code 2."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A name -> object map with lazy entries, duplicate checks and helpful errors.

    Args:
        kind: human name used in error messages, e.g. ``"decoding strategy"``.
        entry_point_group: optional entry-point group scanned once on first lookup.

    Example:
        >>> r = Registry("widget")
        >>> @r.register("blue")
        ... def blue(): return "b"
        >>> r.get("blue")()
        'b'
        >>> r.get("bleu")
        Traceback (most recent call last):
        ...
        contrastkit.registry.RegistryError: unknown widget 'bleu'. Did you mean 'blue'? Known: blue
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T | str] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str, obj: T | str | None = None) -> Any:
        """Register ``obj`` under ``name``; usable as ``@reg.register("name")`` or ``reg.register("name", obj)``.

        ``obj`` may be a ``"module:attr"`` string, resolved on first :meth:`get`.
        """
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(fn: T) -> T:
            self._add(name, fn)
            return fn

        return decorator

    def _add(self, name: str, obj: T | str) -> None:
        if not name or not isinstance(name, str):
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            existing = self._items[name]
            if existing is obj or (isinstance(existing, str) and not isinstance(obj, str)):
                # re-registering the same object, or a lazy entry being resolved by its own module import
                self._items[name] = obj
                return
            raise RegistryError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.value

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """Return the entry for ``name``, importing it if it was registered lazily."""
        self._load_entry_points()
        if name not in self._items:
            known = ", ".join(sorted(self._items))
            raise RegistryError(f"unknown {self.kind} '{name}'.{did_you_mean(name, list(self._items))} Known: {known}")
        obj = self._items[name]
        if isinstance(obj, str):
            module_name, _, attr = obj.partition(":")
            module = importlib.import_module(module_name)
            obj = getattr(module, attr) if attr else module
            self._items[name] = obj
        return obj  # type: ignore[return-value]

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]


DECODERS: Registry = Registry("decoding strategy", "contrastkit.decoders")
LOSSES: Registry = Registry("preference loss", "contrastkit.losses")
RANKERS: Registry = Registry("ranker", "contrastkit.rankers")
TASKS: Registry = Registry("eval task", "contrastkit.tasks")
TRAINERS: Registry = Registry("training recipe", "contrastkit.trainers")


def register_decoder(name: str) -> Callable[[T], T]:
    return DECODERS.register(name)


def register_loss(name: str) -> Callable[[T], T]:
    return LOSSES.register(name)


def register_ranker(name: str) -> Callable[[T], T]:
    return RANKERS.register(name)


def register_task(name: str) -> Callable[[T], T]:
    return TASKS.register(name)
