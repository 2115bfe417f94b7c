"""A typed name -> item registry whose misses suggest the closest known name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from lepton.core.errors import UnknownNameError

T = TypeVar("T")


def suggest(name: str, known: Iterable[str]) -> str:
    """'; did you mean X?' for the closest known name, or '' when nothing is close."""
    hint = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {hint[0]!r}?" if hint else ""


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self._what = what
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            # A programming error, not a user one: two modules claim one name.
            raise ValueError(f"{self._what} {name!r} is already registered; pick another name")
        self._items[name] = item

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        raise UnknownNameError(
            f"unknown {self._what} {name!r}{suggest(name, self._items)} "
            f"(known: {', '.join(sorted(self._items))})"
        )

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
