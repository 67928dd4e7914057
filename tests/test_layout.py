"""The dependency picture of DESIGN.md, checked: spaces and latency models import the core of
`nas` only, never each other, and only the wiring modules look names up in registries."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIRING = {
    "nas.app.pipeline",
    "nas.app.cli",
    "nas.app.config",
    "nas.app.demo",
    "nas.app.latency_commands",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> dict[str, set[str]]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts): _imports(p)
        for p in (ROOT / package).rglob("*.py")
    }


def test_plugins_do_not_import_each_other_or_the_wiring() -> None:
    for package, other in (
        ("search_spaces", "latency_models"),
        ("latency_models", "search_spaces"),
    ):
        for module, imports in _modules(package).items():
            bad = {i for i in imports if i.split(".")[0] == other or i in WIRING}
            assert not bad, f"{module} imports {bad}"


def test_engine_takes_objects_not_names() -> None:
    for module, imports in _modules("nas").items():
        if module in WIRING:
            continue
        bad = {i for i in imports if i.split(".")[0] in ("search_spaces", "latency_models")}
        assert not bad, f"{module} imports {bad}: only {sorted(WIRING)} may resolve names"
