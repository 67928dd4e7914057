"""Every module says what it offers (`__all__`, kept sorted by ruff), and what it lists exists: a user (and the API
reference) can tell public names from helpers, which start with `_`."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for pkg in ("nas", "latency_models", "search_spaces")
    for p in (ROOT / pkg).rglob("*.py")
    if p.name != "__main__.py"
)


@pytest.mark.parametrize("name", MODULES)
def test_module_lists_its_public_names(name: str) -> None:
    module = importlib.import_module(name)
    listed = getattr(module, "__all__", None)
    assert isinstance(listed, list), f"{name} has no __all__"
    missing = [n for n in listed if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it lacks: {missing}"
    private = [n for n in listed if n.startswith("_") and n != "__version__"]
    assert not private, f"{name}.__all__ lists private names: {private}"
