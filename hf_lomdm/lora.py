"""PEFT LoRA for LoMDM: which modules to adapt, and what happens to the learned schedules.

    from peft import get_peft_model
    from hf_lomdm.lora import lomdm_lora_config
    model = get_peft_model(model, lomdm_lora_config(model, r=16, lora_alpha=32))

Decisions (the model card repeats them):
- **Targets**: the backbone's llama-named projections `q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`
  (PEFT has no default for `model_type="lomdm"`, so they are always explicit).
- **No `task_type`**: none of PEFT's fits a masked diffusion model. `CAUSAL_LM`'s wrapper drives transformers'
  autoregressive generation (it needs `prepare_inputs_for_generation`), `SEQ_2_SEQ_LM` is encoder-decoder, and the
  classification / feature-extraction wrappers pass `inputs_embeds`, which LoMDM does not take. A plain
  `PeftModel` delegates `forward` / `generate` / `forward_exponents` to the model unchanged.
- **Schedulers go in `modules_to_save`** (trained in full and saved with the adapter): g_φ / g_ψ read the backbone's
  features f(x), which LoRA changes, so a frozen scheduler would score features it was never trained on; they are
  one layer each, small next to the backbone. `per_position`'s θ (one score per position) is saved the same way.
  PEFT never puts LoRA inside a `modules_to_save` module, so the schedulers' own q/k/v/o projections are not
  adapted twice. `train_schedulers=False` freezes them instead (their layers are then excluded from LoRA too, and
  the adapter saves LoRA weights only): the learned order stays the base model's.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig

from .parameter_groups import scheduler_modules

BACKBONE_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

__all__ = ["BACKBONE_TARGET_MODULES", "lomdm_lora_config"]


def lomdm_lora_config(
    model,
    *,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] = BACKBONE_TARGET_MODULES,
    train_schedulers: bool = True,
) -> LoraConfig:
    """A `LoraConfig` for `model`: LoRA on the backbone's `target_modules`, schedulers trained in full or frozen.

    Args:
        model: the `LoMDMForMaskedDiffusion` to adapt.
        r, lora_alpha, lora_dropout: LoRA rank, scaling numerator and dropout.
        target_modules: llama-style projection names to adapt (a subset of `BACKBONE_TARGET_MODULES`).
        train_schedulers: keep the learned schedules trainable (`modules_to_save`) or freeze them.
    """
    unknown = sorted(set(target_modules) - set(BACKBONE_TARGET_MODULES))
    if unknown or not target_modules:
        raise ValueError(
            f"`target_modules` must be a non-empty subset of {BACKBONE_TARGET_MODULES}, "
            f"got {list(target_modules)}."
        )
    if r <= 0:
        raise ValueError(f"`r` must be > 0, got {r}.")
    schedulers = scheduler_modules(model)
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(target_modules),
        modules_to_save=schedulers if train_schedulers else None,
        # Frozen schedulers: keep LoRA out of their layers (modules_to_save does that when they train).
        exclude_modules=None
        if train_schedulers or not schedulers
        else rf"(.*\.)?({'|'.join(schedulers)})\..*",
    )
