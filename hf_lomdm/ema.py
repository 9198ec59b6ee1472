"""Exponential moving average of the weights, and the `TrainerCallback` that keeps it during training.

`LoMDMTrainer` evaluates and saves the EMA weights (`ema_decay`); checkpoints store the EMA beside the raw
weights as `ema.safetensors`, so that a resumed run continues the same average.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import TrainerCallback

EMA_WEIGHTS_NAME = "ema.safetensors"


class ExponentialMovingAverage:
    """EMA of the trainable weights, `w̄ ← d w̄ + (1 − d) w`, kept in float32.

    The decay warms up as `d_n = min(decay, (1 + n) / (10 + n))` after `n` updates, so that short runs are not
    averaged towards the random initialisation. The shadow is created from the weights at the first update.

    Args:
        decay: the asymptotic decay `d` in (0, 1).
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {}

    @staticmethod
    def _parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return (
            (name, p) for name, p in model.named_parameters() if p.requires_grad and p.is_floating_point()
        )

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if not self.shadow:
            self.shadow = {name: p.detach().float().clone() for name, p in self._parameters(model)}
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, p in self._parameters(model):
            self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the EMA weights into `model` (no-op before the first update)."""
        if not self.shadow:
            yield
            return
        params = dict(self._parameters(model))
        backup = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(backup[name])

    def save(self, path: str) -> None:
        save_file(
            {k: v.contiguous() for k, v in self.shadow.items()},
            path,
            metadata={"num_updates": str(self.num_updates), "decay": str(self.decay)},
        )

    def load(self, path: str, model: nn.Module) -> None:
        devices = {name: p.device for name, p in self._parameters(model)}
        with safe_open(path, framework="pt") as f:
            self.num_updates = int(f.metadata()["num_updates"])
            names = f.keys()  # a safe_open handle is not iterable
            self.shadow = {name: f.get_tensor(name).to(devices[name]) for name in names}


class EMACallback(TrainerCallback):
    """Updates the EMA after every optimizer step and stores it beside each checkpoint's raw weights."""

    def __init__(self, ema: ExponentialMovingAverage):
        self.ema = ema

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            self.ema.save(os.path.join(args.output_dir, f"checkpoint-{state.global_step}", EMA_WEIGHTS_NAME))


__all__ = ["EMA_WEIGHTS_NAME", "EMACallback", "ExponentialMovingAverage"]
