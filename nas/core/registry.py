"""Registries: the things users pick by name (spaces, devices, latency models).

A registry maps a name to a factory. It is a plain object owned by the package that fills it
(`search_spaces.SPACES`, `latency_models.DEVICES`, ...); nothing registers itself at import time
behind the user's back, and an unknown name gets an error listing close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = [
    "Registry",
    "UnknownNameError",
]

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists close matches and all valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}

    def register(
        self, name: str, factory: Callable[..., T], help: str = "", *, replace: bool = False
    ) -> Callable[..., T]:
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._factories and not replace:
            raise ValueError(
                f"{self.kind} {name!r} is already registered; pass replace=True to override it"
            )
        self._factories[name] = factory
        self._help[name] = help
        return factory

    def get(self, name: str, **kwargs: object) -> T:
        """Build the registered object `name` with `kwargs`."""
        return self.factory(name)(**kwargs)

    def factory(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(self._unknown(name)) from None

    def _unknown(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), list(self._factories), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self.list())}"

    def describe(self, name: str) -> str:
        self.factory(name)
        return self._help[name]

    def list(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._factories)
