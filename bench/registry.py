"""Registries that check their input (STYLE.md #3).

A registry maps a short name to an object plus metadata. Registering a duplicate
or malformed name is a programming error (``ValueError``); looking up an unknown
name is a user error (``BenchError``) that lists the accepted choices.
"""
from __future__ import annotations

import re
from typing import Any, Generic, Iterator, TypeVar

from bench.errors import BenchError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # "family", "dataset", "metric"; used in messages
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must match {_NAME.pattern}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise BenchError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[tuple[str, T]]:
        """Entries in registration order (where order means something: evaluators run and report in it)."""
        return list(self._items.items())


def describe(obj: Any) -> str:
    """First line of an object's docstring, for `bench list`."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
