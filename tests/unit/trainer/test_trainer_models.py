"""Built-in models and the serving wrapper."""

from __future__ import annotations

import pytest
import torch

from coxswain_trainer.models import CNN, MLP, ServingModel, build_model

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("kind", ["linear", "mlp", "cnn"])
def test_models_take_flat_features(kind: str) -> None:
    model = build_model(kind, 64, 10, hidden_sizes=[16], channels=[4, 8], dropout=0.2)
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_dropout_is_in_mlp_and_cnn() -> None:
    assert any(isinstance(m, torch.nn.Dropout) for m in MLP(4, [8], 2, 0.5).modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in CNN(64, [4], [8], 2, 0.5).modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in MLP(4, [8], 2, 0.0).modules())


def test_cnn_refuses_non_square_inputs() -> None:
    with pytest.raises(ValueError, match="square"):
        CNN(10, [4], [8], 1, 0.0)


def test_unknown_model_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="linear, mlp, cnn"):
        build_model("rnn", 4, 1)


def test_serving_model_standardises_inputs_and_restores_target_units() -> None:
    core = torch.nn.Linear(2, 1)
    mean, std = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])
    serving = ServingModel(core, mean, std, target_mean=100.0, target_std=10.0)
    x = torch.tensor([[3.0, 6.0]])
    with torch.no_grad():
        assert torch.allclose(serving(x), core((x - mean) / std) * 10.0 + 100.0)
