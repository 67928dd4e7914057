from __future__ import annotations

import pytest

import search_spaces
from nas.core.registry import Registry, UnknownNameError


def test_unknown_name_lists_close_matches_and_all_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        search_spaces.get_space("mobilenet_v3")
    msg = str(err.value)
    assert "Did you mean 'mobilenetv3'" in msg
    assert "fbnet, mobilenetv3, nb201, tiny" in msg


def test_registry_refuses_duplicates_unless_replaced() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a", lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", lambda: 2)
    reg.register("a", lambda: 3, replace=True)
    assert reg.get("a") == 3 and "a" in reg and reg.list() == ["a"]
    with pytest.raises(ValueError, match="non-empty"):
        reg.register("", lambda: 0)


def test_space_kwargs_pass_through() -> None:
    space = search_spaces.get_space("mobilenetv3", width_mult=1.2)
    assert space.widths[0] == 24  # type: ignore[attr-defined]
