"""`nas federated`'s tier rule and tier sampling flags reach the tiers and the run's spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.app.cli import build_parser, main

TIER = ["--tier", "p:pixel3-emulated:0.34:2", "--candidates", "200"]


def test_the_depth_rule_picks_a_deeper_subnet(capsys: pytest.CaptureFixture[str]) -> None:
    from nas.app.federated_commands import _tiers
    from nas.federated import arch_depth

    macs = _tiers(build_parser().parse_args(["federated", "tiers", *TIER]))[1][0]
    deep = _tiers(build_parser().parse_args(["federated", "tiers", *TIER, "--tier-rule", "depth"]))
    assert arch_depth(deep[1][0].arch) > arch_depth(macs.arch)
    assert deep[1][0].predicted_ms <= 0.34
    assert main(["federated", "tiers", *TIER, "--tier-rule", "depth"]) == 0
    assert "MMACs" in capsys.readouterr().out


def test_tier_sampling_reaches_the_spec(tmp_path: Path) -> None:
    from nas.app.federated_commands import _spec

    base = ["federated", "run", "--out", str(tmp_path), *TIER]
    assert _spec(build_parser().parse_args(base)).tier_sampling == "sandwich"
    for mode in ("own", "nested"):
        chosen = build_parser().parse_args([*base, "--tier-sampling", mode])
        assert _spec(chosen).tier_sampling == mode
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--tier-sampling", "bogus"])
