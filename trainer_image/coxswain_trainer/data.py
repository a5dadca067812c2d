"""Built-in data sets (shipped with scikit-learn, nothing is downloaded), the seeded split,
standardisation fitted on the training split, and per-rank sharding of every epoch.

Built-in data are small, so the whole split lives as tensors on the training device and a
batch is one indexing operation: no DataLoader, no worker processes, no per-sample Python.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

TaskKind = Literal["classification", "regression"]
DATASETS = ("digits", "diabetes", "synthetic-regression")


class SampleSource(Protocol):
    """Something a batch can be cut from by a tensor of sample indices."""

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TensorSource:
    """Features and targets already on the device; a batch is `x[indices]`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[indices], self.y[indices]


class DatasetSource:
    """A user's map-style dataset: items collated on the main process, then moved to the device."""

    def __init__(self, dataset: Dataset[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        self.dataset = dataset
        self.device = device

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = default_collate([self.dataset[i] for i in indices.tolist()])
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


@dataclass
class TaskData:
    """A task's two splits and what export needs to know about them."""

    kind: TaskKind
    train: SampleSource
    eval: SampleSource
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    num_outputs: int
    labels: list[str] | None = None
    feature_mean: torch.Tensor | None = None  # standardisation, baked into the exported model
    feature_std: torch.Tensor | None = None
    target_mean: float = 0.0  # regression targets are trained standardised; export undoes it
    target_std: float = 1.0
    input_dtype: torch.dtype = torch.float32


def split_indices(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/eval split; both sides get at least one sample."""
    order = np.random.default_rng(seed).permutation(n)
    n_eval = min(max(1, round(n * eval_fraction)), n - 1)
    return order[n_eval:], order[:n_eval]


def _sklearn_data_file(name: str) -> Path | None:
    """A data file shipped inside scikit-learn, found without importing scikit-learn (which
    costs each rank seconds of start-up); None if the package layout is not the expected one."""
    spec = importlib.util.find_spec("sklearn")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "datasets" / "data" / name
        if candidate.is_file():
            return candidate
    return None


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    path = _sklearn_data_file("digits.csv.gz")
    if path is None:
        from sklearn.datasets import load_digits

        return load_digits(return_X_y=True)  # type: ignore[no-any-return]
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1]


def _load_diabetes() -> tuple[np.ndarray, np.ndarray]:
    data_path, target_path = (
        _sklearn_data_file("diabetes_data_raw.csv.gz"),
        _sklearn_data_file("diabetes_target.csv.gz"),
    )
    if data_path is None or target_path is None:
        from sklearn.datasets import load_diabetes

        return load_diabetes(return_X_y=True)  # type: ignore[no-any-return]
    x = np.loadtxt(data_path)
    # The same scaling load_diabetes applies: centred, unit norm per column.
    x = (x - x.mean(axis=0)) / x.std(axis=0) / np.sqrt(x.shape[0])
    return x, np.loadtxt(target_path)


def _load_arrays(dataset: str, seed: int, samples: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    if dataset == "digits":
        x, y = _load_digits()
        return x.astype(np.float32), y.astype(np.int64)
    if dataset == "diabetes":
        x, y = _load_diabetes()
        return x.astype(np.float32), y.astype(np.float32)
    if dataset == "synthetic-regression":
        # Its own stream, so changing the split ratio does not change the data.
        rng = np.random.default_rng([seed, 0x5EED])
        x = rng.normal(size=(samples, features))
        w = rng.normal(size=features)
        y = x @ w + 0.5 + 0.1 * rng.normal(size=samples)
        return x.astype(np.float32), y.astype(np.float32)
    raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")


def load_builtin(
    dataset: str,
    *,
    eval_fraction: float,
    seed: int,
    standardize: bool,
    device: torch.device,
    synthetic_samples: int = 1000,
    synthetic_features: int = 8,
) -> TaskData:
    x, y = _load_arrays(dataset, seed, synthetic_samples, synthetic_features)
    train_idx, eval_idx = split_indices(len(x), eval_fraction, seed)
    x_train, x_eval = x[train_idx], x[eval_idx]
    mean = std = None
    if standardize:
        mean_np = x_train.mean(axis=0)
        std_np = x_train.std(axis=0)
        std_np[std_np < 1e-8] = 1.0  # constant features (border pixels of digits) stay as they are
        x_train = (x_train - mean_np) / std_np
        x_eval = (x_eval - mean_np) / std_np
        mean, std = torch.from_numpy(mean_np), torch.from_numpy(std_np)
    if dataset == "digits":
        return TaskData(
            kind="classification",
            train=TensorSource(
                torch.from_numpy(x_train).to(device), torch.from_numpy(y[train_idx]).to(device)
            ),
            eval=TensorSource(torch.from_numpy(x_eval).to(device), torch.from_numpy(y[eval_idx]).to(device)),
            input_shape=(x.shape[1],),
            num_outputs=10,
            labels=[str(d) for d in range(10)],
            feature_mean=mean,
            feature_std=std,
        )
    y_train, y_eval = y[train_idx], y[eval_idx]
    t_mean, t_std = float(y_train.mean()), float(y_train.std()) or 1.0
    return TaskData(
        kind="regression",
        train=TensorSource(
            torch.from_numpy(x_train).to(device),
            torch.from_numpy((y_train - t_mean) / t_std)[:, None].to(device),
        ),
        eval=TensorSource(
            torch.from_numpy(x_eval).to(device),
            torch.from_numpy((y_eval - t_mean) / t_std)[:, None].to(device),
        ),
        input_shape=(x.shape[1],),
        num_outputs=1,
        feature_mean=mean,
        feature_std=std,
        target_mean=t_mean,
        target_std=t_std,
    )


def epoch_shard(
    n: int,
    *,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    device: torch.device,
    start: int = 0,
) -> torch.Tensor:
    """This rank's sample indices for what is left of `epoch` after its first `start` samples.

    An epoch is one seeded permutation of the training split (the same on every world size,
    and the one DistributedSampler draws). Every optimizer step consumes the next
    `batchSize` entries of it, dealt out round-robin to the ranks, so the samples consumed so
    far are always a prefix of the permutation and a checkpoint only records its length
    (`epoch_samples`). A run resumed on a different number of processes trains the rest of
    the permutation, dealt out round-robin to the new ranks; padding (to give every rank the
    same number of steps) repeats samples from the start of the permutation, as
    DistributedSampler does. With `start` 0 this is exactly DistributedSampler's shard.
    """
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator)
    rest = order[start:]
    pad = (-int(rest.shape[0])) % world_size
    if pad:
        rest = torch.cat([rest, order.repeat(math.ceil(pad / n))[:pad]])
    return rest[rank::world_size].to(device)


def eval_shard(n: int, *, rank: int, world_size: int, device: torch.device) -> torch.Tensor:
    """A strided, unpadded share of the eval split, so summed metrics count every sample once."""
    return torch.arange(rank, n, world_size, dtype=torch.long, device=device)
