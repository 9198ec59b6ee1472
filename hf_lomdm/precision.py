"""bf16 autocast or float32 on a CPU with bf16 units, chosen by timing the run's own training step.

On a CPU with bf16 matrix units (AMX, AVX512-BF16) what bf16 autocast gains depends on the model and the batch:
on one AVX512-BF16 CPU, MDLM mode ran 2.26x faster at 4 x 256 but only 1.31x at the main job's 4 x 128 (a loaded
A/B of the main job saw no gain), and a 1 x 32 model ran 0.6x as fast (docs/scaling.md). `bf16: auto` in
`lomdm-train` therefore measures instead of guessing: before training, `calibrate_training_precision` times a few
forward + backward passes of the training loss on the first batch (the model and batch shape of the run), in
float32 and in bf16 autocast, interleaved, and chooses bf16 only if it is at least `BF16_SPEEDUP_MARGIN` times
faster (a smaller gain is within the noise of a shared machine and not worth bf16's rounding). The measurement and
the choice are logged and stated in the model card; it costs about 8 forward + backward passes (7 s for the main
job on that CPU). CPUs without bf16 units use float32 without calibrating (bf16 is several times slower there,
`hf_lomdm.runtime`); GPUs keep the hardware rule (bf16 where supported).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.utils import logging

from .objective import lomdm_loss
from .trainer import LoMDMTrainingArguments

logger = logging.get_logger(__name__)

__all__ = [
    "BF16_SPEEDUP_MARGIN",
    "Bf16Calibration",
    "calibrate_bf16",
    "calibrate_training_precision",
    "training_step",
]

# bf16 autocast is chosen only when its step is at least this many times faster than float32's.
BF16_SPEEDUP_MARGIN = 1.10


@dataclass(frozen=True)
class Bf16Calibration:
    """What `calibrate_bf16` measured.

    Args:
        float32_seconds, bf16_seconds: median seconds per step in each precision.
        speedup: median over rounds of (float32 seconds / bf16 seconds) of the same round.
        margin: the speed-up bf16 needed to be chosen.
        rounds: timed steps per precision.
        tokens_per_step: tokens of the timed batch (for the rates).
    """

    float32_seconds: float
    bf16_seconds: float
    speedup: float
    margin: float
    rounds: int
    tokens_per_step: int

    @property
    def use_bf16(self) -> bool:
        return self.speedup >= self.margin

    @property
    def precision(self) -> str:
        """The precision as the report and the model card state it."""
        chosen = "bf16 autocast" if self.use_bf16 else "float32"
        return (
            f"{chosen} (chosen by calibration: bf16 {self.speedup:.2f}x float32, needs >= {self.margin:.2f}x)"
        )

    def summary(self) -> str:
        return (
            f"float32 {self.tokens_per_step / self.float32_seconds:.0f} tokens/s, bf16 autocast "
            f"{self.tokens_per_step / self.bf16_seconds:.0f} tokens/s: bf16 {self.speedup:.2f}x float32 (median of "
            f"{self.rounds} interleaved steps each) -> {'bf16 autocast' if self.use_bf16 else 'float32'} "
            f"(bf16 needs >= {self.margin:.2f}x)"
        )


def calibrate_bf16(
    step: Callable[[bool], object],
    tokens_per_step: int,
    *,
    rounds: int = 3,
    margin: float = BF16_SPEEDUP_MARGIN,
    timer: Callable[[], float] = time.perf_counter,
) -> Bf16Calibration:
    """Time `step(bf16)` (one training step, in bf16 autocast when True) in both precisions and decide.

    One untimed step of each warms up (allocations, kernel selection); then `rounds` rounds time one step of each,
    alternating which goes first, so that load changing over time hits both alike. Logs the result.

    Raises:
        ValueError: for `rounds < 1`, `margin <= 0` or `tokens_per_step < 1`.
    """
    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds}.")
    if not margin > 0:
        raise ValueError(f"`margin` must be > 0, got {margin}.")
    if tokens_per_step < 1:
        raise ValueError(f"`tokens_per_step` must be >= 1, got {tokens_per_step}.")
    step(False)
    step(True)
    seconds = {False: [], True: []}
    for round_ in range(rounds):
        for bf16 in (False, True) if round_ % 2 == 0 else (True, False):
            start = timer()
            step(bf16)
            seconds[bf16].append(timer() - start)
    calibration = Bf16Calibration(
        float32_seconds=statistics.median(seconds[False]),
        bf16_seconds=statistics.median(seconds[True]),
        speedup=statistics.median(f / b for f, b in zip(seconds[False], seconds[True])),
        margin=margin,
        rounds=rounds,
        tokens_per_step=tokens_per_step,
    )
    logger.warning(f"bf16=auto calibration: {calibration.summary()}.")
    return calibration


def training_step(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], args: LoMDMTrainingArguments
) -> Callable[[bool], None]:
    """`step(bf16)`: one forward + backward of `LoMDMTrainer`'s loss (`lomdm_loss` with the estimator, K and times
    of `args`) on `batch`, in bf16 autocast when `bf16`; the gradients are dropped (no optimizer step)."""
    device = batch["input_ids"].device

    def step(bf16: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            res = lomdm_loss(
                model,
                batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                labels=batch.get("labels"),
                num_samples=args.num_noise_samples,
                estimator=args.estimator,
                time_sampling=args.time_sampling,
                uniform_weight=args.time_uniform_weight,
                eps=args.noise_eps,
                generator=torch.Generator(device).manual_seed(args.seed),
            )
        res.loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def calibrate_training_precision(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    args: LoMDMTrainingArguments,
    *,
    rounds: int = 3,
    margin: float = BF16_SPEEDUP_MARGIN,
) -> Bf16Calibration:
    """`calibrate_bf16` of `training_step(model, batch, args)` with the model in training mode. Afterwards the
    model's mode, its gradients (none) and the global random state (dropout) are as before, so the run that follows
    is the one it would have been."""
    was_training = model.training
    tokens = int(batch["input_ids"].numel())
    try:
        with torch.random.fork_rng(devices=[]):
            model.train()
            return calibrate_bf16(training_step(model, batch, args), tokens, rounds=rounds, margin=margin)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
