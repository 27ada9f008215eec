"""The finite guard's gradient check: silent on finite gradients, names the parameter that went non-finite."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from core.errors import WorkbenchError
from models.guards import FiniteGuard


def module_with_gradients(bad: float | None) -> torch.nn.Module:
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    module(torch.ones(4, 3)).sum().backward()
    if bad is not None:
        module[1].weight.grad[0, 1] = bad
    return module


def test_finite_gradients_pass():
    FiniteGuard().on_after_backward(SimpleNamespace(global_step=0, current_epoch=0), module_with_gradients(None))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_gradient_stops_training_naming_the_parameter(bad):
    trainer = SimpleNamespace(global_step=7, current_epoch=1)
    with pytest.raises(WorkbenchError, match=r"gradient of 1\.weight became non-finite at global step 7 \(epoch 1"):
        FiniteGuard().on_after_backward(trainer, module_with_gradients(bad))
