"""Helpers for the trainer's unit tests: specs as a user writes them (camelCase YAML)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


BASE_SPEC: dict[str, Any] = {
    "task": {"builtin": {"model": "mlp", "dataset": "digits", "hiddenSizes": [32]}},
    "optimization": {"batchSize": 64, "epochs": 2},
    "checkpoint": {"intervalSteps": 1000},
}


@pytest.fixture
def make_spec() -> Any:
    def make(**overrides: Any) -> dict[str, Any]:
        return _merge(BASE_SPEC, overrides)

    return make


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Two shared cores: keep each test from fighting the rest of the machine.
    torch.set_num_threads(1)
