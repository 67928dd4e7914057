"""A multi-layer perceptron accuracy predictor on (one-hot) arch codes, as Once-for-All's
(Cai et al., ICLR 2020: 3 x 400); trained with torch, run with numpy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nas.predictors.base import _check_xy, _need_fit, _save_npz, _Scaler

__all__ = ["MLPPredictor"]


def _train_mlp(
    x: np.ndarray,
    z: np.ndarray,
    hidden: Sequence[int],
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> dict[str, np.ndarray]:
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    torch_rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # layer init; restored below so callers' torch RNG is untouched
    try:
        layers: list[nn.Module] = []
        width = x.shape[1]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        net = nn.Sequential(*layers)
    finally:
        torch.random.set_rng_state(torch_rng_state)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small net trains several times faster on one thread
    try:
        return _fit_net(net, x, z, epochs, lr, weight_decay, batch_size, gen)
    finally:
        torch.set_num_threads(threads)


def _fit_net(
    net: Any,
    x: np.ndarray,
    z: np.ndarray,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    gen: Any,
) -> dict[str, np.ndarray]:
    import torch
    from torch import nn

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt = torch.as_tensor(x, dtype=torch.float32)  # N x F
    zt = torch.as_tensor(z, dtype=torch.float32)  # N
    n = len(xt)
    bs = min(batch_size, n)
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                loss = nn.functional.mse_loss(net(xt[idx]).squeeze(1), zt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _mlp_forward(x: np.ndarray, weights: Mapping[str, np.ndarray], n_layers: int) -> np.ndarray:
    h = x
    for i in range(n_layers):
        h = h @ weights[f"{2 * i}.weight"].T + weights[f"{2 * i}.bias"]
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
    return h[:, 0]


class MLPPredictor:
    """A multi-layer perceptron on (one-hot) arch codes, as Once-for-All's accuracy predictor.

    Trained with AdamW and a cosine schedule on standardised targets; inference is numpy, so a
    loaded predictor does not need torch at all.
    """

    kind: ClassVar[str] = "mlp"

    def __init__(
        self,
        hidden: Sequence[int] = (400, 400, 400),
        epochs: int = 200,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.hidden, self.epochs, self.lr = tuple(int(h) for h in hidden), epochs, lr
        self.weight_decay, self.batch_size, self.seed = weight_decay, batch_size, seed
        self._weights: dict[str, np.ndarray] | None = None
        self._scaler = _Scaler()

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPPredictor:
        x, t = _check_xy(X, y)
        assert t is not None
        self._scaler = _Scaler.fit(t)
        z = (t - self._scaler.mean) / self._scaler.std
        self._weights = _train_mlp(
            x, z, self.hidden, self.epochs, self.lr, self.weight_decay, self.batch_size, self.seed
        )
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        _need_fit(self._weights is not None, self)
        assert self._weights is not None
        x, _ = _check_xy(X)
        z = _mlp_forward(x, self._weights, len(self.hidden) + 1)
        return self._scaler.mean + self._scaler.std * z

    def _config(self) -> dict[str, Any]:
        return {
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def save(self, path: str | Path) -> Path:
        _need_fit(self._weights is not None, self)
        assert self._weights is not None
        config = {**self._config(), "y_mean": self._scaler.mean, "y_std": self._scaler.std}
        return _save_npz(path, self.kind, config, self._weights)

    @classmethod
    def _from_saved(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> MLPPredictor:
        scaler = _Scaler(float(config.pop("y_mean")), float(config.pop("y_std")))
        p = cls(**config)
        p._weights, p._scaler = dict(arrays), scaler
        return p
