"""The house of DESIGN.md section 3, held as an allow-list: each package may import exactly the
packages its arrows allow, so the picture stays a tree. A new arrow fails with the rule it
breaks; moving a line of the picture means changing `ALLOWED` here and DESIGN.md together.

Every import counts: at the top of a module, inside a function, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "latency_models", "search_spaces")

CORE = {"nas.core"}
BACKENDS = {"nas.core", "nas.backends"}
EVERYTHING = {
    "nas",
    "nas.core",
    "nas.backends",
    "nas.data",
    "nas.supernet",
    "nas.predictors",
    "nas.search",
    "nas.hwtrain",
    "nas.compress",
    "nas.ondevice",
    "nas.federated",
    "nas.viz",
    "nas.app",
    "latency_models",
    "search_spaces",
}

# unit -> the units it may import (itself always allowed). Engine parts import core, backends
# and each other downhill, in this order: data, supernet, predictors, search, hwtrain, compress,
# ondevice, federated; never latency_models or search_spaces (they take objects, not names).
ALLOWED: dict[str, set[str]] = {
    "nas.core": set(),
    "nas.backends": CORE,
    "search_spaces": CORE,
    "latency_models": BACKENDS,
    "nas.data": BACKENDS,
    "nas.supernet": BACKENDS | {"nas.data"},
    "nas.predictors": BACKENDS,
    "nas.search": BACKENDS | {"nas.predictors"},
    "nas.hwtrain": BACKENDS | {"nas.data", "nas.supernet"},
    "nas.compress": BACKENDS | {"nas.data", "nas.supernet"},
    "nas.ondevice": BACKENDS | {"nas.data", "nas.supernet", "nas.compress"},
    "nas.federated": BACKENDS | {"nas.data", "nas.supernet", "nas.search", "nas.compress"},
    "nas.viz": CORE | {"nas.search"},
    # only the app (and the front door that names its exports) resolves names and knows every wing
    "nas.app": EVERYTHING,
    "nas": EVERYTHING,
}

RULES = {
    "nas.core": "nas.core is the ground floor: it imports nothing of ours",
    "nas.backends": "nas.backends makes and runs artifacts and imports only nas.core",
    "search_spaces": "search spaces import only nas.core",
    "latency_models": "latency_models imports nas.core and nas.backends, never an engine part",
    "nas.viz": "nas.viz draws results: it imports nas.core and nas.search only",
}
ENGINE_RULE = (
    "engine parts import nas.core, nas.backends and the engine parts below them "
    "(data < supernet, predictors < search < hwtrain, compress < ondevice < federated); they "
    "take spaces, devices and latency models as objects and never import search_spaces, "
    "latency_models or nas.app"
)


def unit_of(module: str) -> str | None:
    """The unit of the picture a module belongs to (the longest listed prefix), or None for a
    module that is not ours."""
    if module.split(".")[0] not in PACKAGES:
        return None
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in ALLOWED:
            return prefix
    return module


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, relative imports resolved, wherever the import stands."""
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # `from nas import viz` imports nas.viz, not the front door: judge each name
            if module != "nas":
                names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names if a.name != "*"}
    return names


def violation(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported` (None when the picture allows it)."""
    src, dst = unit_of(importer), unit_of(imported)
    if src is None or dst is None or src == dst or src not in ALLOWED:
        return None
    if dst in ALLOWED[src]:
        return None
    rule = RULES.get(src, ENGINE_RULE)
    return f"{importer} imports {imported} ({src} -> {dst}): {rule} (DESIGN.md section 3)"


def _our_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_import_follows_the_picture() -> None:
    problems = []
    for path in _our_files():
        importer = module_name(path)
        for imported in sorted(imports_of(path)):
            why = violation(importer, imported)
            if why:
                problems.append(why)
    assert not problems, "\n".join(problems)


def test_every_unit_of_the_tree_is_in_the_picture() -> None:
    """A new subpackage of nas joins the picture on purpose, not by default."""
    units = {unit_of(module_name(p)) for p in _our_files()}
    assert units <= set(ALLOWED), sorted(u for u in units - set(ALLOWED) if u)


@pytest.mark.parametrize(
    ("importer", "imported", "rule"),
    [
        ("nas.core.space", "nas.search", "ground floor"),
        ("nas.backends.onnx", "nas.compress.distill", "only nas.core"),
        ("latency_models.lut", "nas.supernet", "never an engine part"),
        ("search_spaces.tiny", "latency_models", "only nas.core"),
        ("nas.search.study", "latency_models", "take spaces, devices and latency models"),
        ("nas.data.digits", "nas.supernet", "below them"),
        ("nas.compress.chain", "nas.app.pipeline", "never import"),
        ("nas.viz", "nas.compress", "nas.core and nas.search only"),
    ],
)
def test_a_planted_wrong_arrow_fails_with_its_rule(importer: str, imported: str, rule: str) -> None:
    why = violation(importer, imported)
    assert why is not None and rule in why and importer in why


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("nas.app.pipeline", "latency_models"),
        ("nas.compress.chain", "nas.supernet"),
        ("latency_models.runtimes.onnxrt", "nas.backends"),
        ("nas.search.samplers.frontier", "nas.predictors"),
        ("nas", "search_spaces"),
        ("nas.supernet.loop", "torch"),
    ],
)
def test_allowed_arrows_pass(importer: str, imported: str) -> None:
    assert violation(importer, imported) is None
