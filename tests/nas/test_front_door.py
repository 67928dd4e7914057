"""`import nas` gives the names a user needs, each from the module that defines it."""

from __future__ import annotations

import subprocess
import sys

import nas


def test_every_exported_name_resolves_to_its_definition() -> None:
    for name in nas.__all__:
        value = getattr(nas, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        home = nas._EXPORTS[name]
        assert value is getattr(__import__(home, fromlist=[name]), name), name


def test_unknown_names_raise_attribute_error() -> None:
    try:
        nas.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown attribute resolved")


def test_importing_a_wing_first_does_not_cycle() -> None:
    """Each package imports cleanly on its own (the front door resolves names lazily)."""
    for first in ("latency_models", "search_spaces", "nas.core.space", "nas.app.cli"):
        code = f"import {first}; import nas; nas.get_space('tiny'); nas.run_search"
        subprocess.run([sys.executable, "-c", code], check=True)
