"""Sizes that keep a file readable (DESIGN.md section 3): a module holds one job, about 500
lines at most; a function does one thing, about 80 lines at most. Data tables and argparse
parser builders are exempt, each named here with its reason; their lines do not count
against their module either."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "latency_models", "search_spaces")
MODULE_LINES = 500
FUNCTION_LINES = 80

EXEMPT = {
    "latency_models/profiles.py:_catalogue": "a data table: the built-in profiles, each figure "
    "with its source",
    "nas/app/cli.py:build_parser": "an argparse parser builder",
}


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _span(node: ast.AST) -> int:
    return int(node.end_lineno or node.lineno) - int(node.lineno) + 1  # type: ignore[attr-defined]


def _sizes() -> tuple[list[str], list[str]]:
    modules, functions = [], []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            tree = ast.parse(text)
            exempt_lines = 0
            for fn in _functions(tree):
                where = f"{rel}:{fn.name}"
                if where in EXEMPT:
                    exempt_lines += _span(fn)
                elif _span(fn) > FUNCTION_LINES:
                    functions.append(f"{where} (line {fn.lineno}): {_span(fn)} lines")
            lines = len(text.splitlines()) - exempt_lines
            if lines > MODULE_LINES:
                modules.append(f"{rel}: {lines} lines")
    return modules, functions


def test_no_module_over_the_limit() -> None:
    modules, _ = _sizes()
    assert not modules, (
        f"modules over {MODULE_LINES} lines (split them along their jobs): " + "; ".join(modules)
    )


def test_no_function_over_the_limit() -> None:
    _, functions = _sizes()
    assert not functions, (
        f"functions over {FUNCTION_LINES} lines (split them, or name a data table or parser "
        "builder in EXEMPT with its reason): " + "; ".join(functions)
    )


def test_every_exemption_still_exists() -> None:
    """An exemption whose function was renamed or removed would silently exempt nothing."""
    for where in EXEMPT:
        rel, name = where.split(":")
        tree = ast.parse((ROOT / rel).read_text())
        assert name in {fn.name for fn in _functions(tree)}, where
