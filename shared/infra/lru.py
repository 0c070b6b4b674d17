"""A mapping with a size bound: past it, the least recently used entry is dropped.

For in-process memory that grows with input (definitions, triggers, …): every such cache holds at most its
bound, whatever the number of tenants. Callers choose a bound for which losing an entry only costs work
(a Redis read, a retry), never correctness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``size`` entries; reading or writing one makes it the most recent."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"an LRU holds at least one entry, not {size}")
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: K, value: V) -> V:
        """Store ``value`` (dropping the least recently used entry past the bound); returns it."""
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def keep(self, wanted: Callable[[K, V], bool]) -> None:
        """Drop every entry for which ``wanted(key, value)`` is false (those that no longer matter)."""
        for key in [k for k, v in self._items.items() if not wanted(k, v)]:
            del self._items[key]
