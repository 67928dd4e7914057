"""nas.backends sits just above the core: it imports nothing of ours but nas.core (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

BACKENDS = Path(__file__).resolve().parents[3] / "nas" / "backends"
OURS = ("nas", "search_spaces", "latency_models")
ALLOWED = (["nas", "core"], ["nas", "backends"])


def _our_imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in OURS}


def test_backends_import_only_the_core_and_themselves() -> None:
    modules = sorted(BACKENDS.rglob("*.py"))
    assert len(modules) > 5, f"no modules found under {BACKENDS}"
    for path in modules:
        bad = {n for n in _our_imports(path) if n.split(".")[:2] not in ALLOWED}
        assert not bad, (
            f"nas/backends/{path.name} imports {sorted(bad)}: nas.backends may import nas.core only"
        )
