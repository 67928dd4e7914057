"""The compression tests' fixtures (a small `tiny` arch, a learnable data set, a trained model)."""

from tests.nas.compress.conftest import arch, data, one_thread, space, trained

__all__ = ["arch", "data", "one_thread", "space", "trained"]
