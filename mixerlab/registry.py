"""Named registries: token mixers, zoo entries and compare experiments share one lookup.

A ``Registry`` maps names to objects in registration order. Registering a name twice is an error,
``remove`` lets a test take its own entry out again, and an unknown name gives a ``ValueError`` that
suggests close names and says what is allowed. Nothing here imports the rest of the package.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one ``kind`` (e.g. ``"token mixer"``).

    ``allowed`` renders the tail of the unknown-name error from the registered names (default: the
    sorted list).
    """

    def __init__(self, kind: str, *, allowed: Callable[[list[str]], str] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._allowed = allowed or (lambda names: f"allowed: {sorted(names)}")

    def add(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = obj
        return obj

    def remove(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"no {self.kind} {name!r} is registered")
        return self._items.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            pass
        if not isinstance(name, str):
            raise ValueError(f"a {self.kind} name must be a string, got {type(name).__name__} "
                             f"{name!r}; {self._allowed(list(self._items))}")
        close = difflib.get_close_matches(name, list(self._items), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown {self.kind} {name!r}{hint}; {self._allowed(list(self._items))}")

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)
