from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nas import search
from nas.cli import main
from search_spaces import TinySpace


def test_pareto_mask() -> None:
    values = np.array([[1, 5], [2, 2], [3, 3], [5, 1], [2, 2]])
    assert search.pareto_mask(values).tolist() == [True, True, False, True, True]


def test_price_study_records_keys_and_resumes(tmp_path: Path) -> None:
    space = TinySpace()
    url = search.sqlite_url(tmp_path / "study.db")
    search.price_study(space, 5, storage=url, seed=1)
    study = search.price_study(space, 8, storage=url, seed=1)
    frame = search.trials_frame(study)
    assert len(frame) == 8
    for _, row in frame.iterrows():
        arch = {k[len("arch.") :]: row[k] for k in frame.columns if k.startswith("arch.")}
        assert row["arch_key"] == space.key(arch)
        assert row["macs"] == space.cost(arch).macs
    with pytest.raises(ValueError, match="n_trials"):
        search.price_study(space, 0)


def test_demo_writes_a_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--trials", "12", "--out", str(out)]) == 0
    for name in ("study.db", "archs.csv", "pareto.csv", "cost_scatter.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    frame = pd.read_csv(out / "archs.csv")
    assert len(frame) == 12 and frame["arch_key"].nunique() <= 12
    assert "12 archs priced" in (out / "report.md").read_text()


def test_cli_unknown_space_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--space", "tinyy"]) == 2
    assert "Did you mean 'tiny'" in capsys.readouterr().err
