"""Shared fixtures. Files from ../shared/ are skipped when missing, but fail under CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared/; skip if missing, or fail when CI=true."""
    path = SHARED / relative
    if not path.exists():
        message = f"needs {path} (the shared benchmark data beside the checkout)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI=true, so a missing file is a failure")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def nb201_csv() -> Path:
    return shared_file("benchmarks/nb201/nb201.csv")
