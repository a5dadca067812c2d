"""The built-in models, and the wrapper that makes an exported model take raw features.

All built-in models take a flat feature vector `[batch, features]`; the CNN reshapes it into
a square one-channel image itself, so a digits model is called the same way whatever its
architecture (the server sends 64 numbers either way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

MODELS = ("linear", "mlp", "cnn")


class MLP(nn.Module):
    def __init__(
        self, in_features: int, hidden_sizes: Sequence[int], out_features: int, dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class CNN(nn.Module):
    """3x3 convolutions (each followed by 2x2 max-pooling while the image is at least 4 wide),
    dropout, then a dense head."""

    def __init__(
        self,
        in_features: int,
        channels: Sequence[int],
        hidden_sizes: Sequence[int],
        out_features: int,
        dropout: float,
    ) -> None:
        super().__init__()
        side = math.isqrt(in_features)
        if side * side != in_features:
            raise ValueError(
                f"the cnn needs square single-channel images; {in_features} features are not a square"
            )
        self.side = side
        layers: list[nn.Module] = []
        width = 1
        for c in channels:
            layers += [nn.Conv2d(width, c, kernel_size=3, padding=1), nn.ReLU()]
            if side >= 4:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            width = c
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.head = MLP(width * side * side, hidden_sizes, out_features, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, self.side, self.side)
        out: torch.Tensor = self.head(self.features(x).flatten(1))
        return out


def build_model(
    kind: str,
    in_features: int,
    out_features: int,
    *,
    hidden_sizes: Sequence[int] = (128, 64),
    channels: Sequence[int] = (16, 32),
    dropout: float = 0.0,
) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "mlp":
        return MLP(in_features, hidden_sizes, out_features, dropout)
    if kind == "cnn":
        return CNN(in_features, channels, hidden_sizes, out_features, dropout)
    raise ValueError(f"unknown model {kind!r}; allowed: {', '.join(MODELS)}")


class ServingModel(nn.Module):
    """Raw features in, predictions in the data's own units out: the training-time
    standardisation of features (and of regression targets) travels inside the model."""

    def __init__(
        self,
        core: nn.Module,
        feature_mean: torch.Tensor | None,
        feature_std: torch.Tensor | None,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.core = core
        self.standardize = feature_mean is not None and feature_std is not None
        self.feature_mean: torch.Tensor
        self.feature_std: torch.Tensor
        self.register_buffer("feature_mean", feature_mean if feature_mean is not None else torch.zeros(1))
        self.register_buffer("feature_std", feature_std if feature_std is not None else torch.ones(1))
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = (x - self.feature_mean) / self.feature_std
        out: torch.Tensor = self.core(x)
        return out * self.target_std + self.target_mean
