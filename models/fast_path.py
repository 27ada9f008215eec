"""GPU fast-path switches that act on the model: channels_last memory format and torch.compile.

A callback rather than module arguments, so checkpoints, export and the plain-loop benchmark see
the same module: `channels_last` only changes how weights are laid out in memory, and
`nn.Module.compile` compiles in place, leaving parameter names (and so checkpoints) unchanged.
"""

from __future__ import annotations

import lightning as L
import torch


class FastPath(L.Callback):
    """Applied once at setup; both switches default on GPU only (configs/callbacks/default.yaml)."""

    def __init__(self, channels_last: bool = False, compile: bool = False, compile_mode: str | None = None):
        self.channels_last = channels_last
        self.compile = compile
        self.compile_mode = compile_mode

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        apply_fast_path(pl_module, self.channels_last, self.compile, self.compile_mode)


def apply_fast_path(module: torch.nn.Module, channels_last: bool, compile: bool, compile_mode: str | None) -> None:
    """Tensor cores read NHWC natively, so channels_last saves the layout transposes around every convolution."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile:
        module.backbone.compile(mode=compile_mode)
