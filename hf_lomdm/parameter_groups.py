"""Which parts of a `LoMDMForMaskedDiffusion` are the learned schedule, as the schedule registry declares them.

The forward and reverse schedulers g_φ, g_ψ (`lomdm`) and the per-position scores θ (`per_position`), listed per
kind in `schedule_lomdm.SCHEDULES`. The trainer gives their parameters their own learning rate, LoRA trains them
in full (`modules_to_save`), and the model card names them.
"""

from __future__ import annotations

from .schedule_lomdm import SCHEDULER_MODULE_NAMES


def scheduler_modules(model) -> list[str]:
    """Names of the learned-schedule modules of a `LoMDMForMaskedDiffusion` (empty for fixed schedules)."""
    return [name for name in SCHEDULER_MODULE_NAMES if getattr(model, name, None) is not None]


def is_scheduler_parameter(name: str) -> bool:
    """Whether a parameter name (as in `model.named_parameters()`, wrappers included) is a scheduler's."""
    return any(part in SCHEDULER_MODULE_NAMES for part in name.split("."))


__all__ = ["SCHEDULER_MODULE_NAMES", "is_scheduler_parameter", "scheduler_modules"]
