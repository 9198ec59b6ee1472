"""Training LoMDM with `transformers.Trainer` (SPEC §4).

`LoMDMTrainer` changes four things about `Trainer` and keeps everything else (accelerate, DDP, FSDP, mixed
precision, checkpoints, resuming, callbacks):

1. Loss. `compute_loss` calls `hf_lomdm.objective.lomdm_loss` (velocity-matched NELBO, RLOO over K noise
   samples). Its surrogate is a per-token mean over the micro-batch; it is rescaled to
   `sum over the micro-batch / num_items_in_batch`, where `num_items_in_batch` counts the noisable tokens
   (`labels != -100`) of the whole accumulated batch (and of every process, with
   `average_tokens_across_devices`). So the gradient is the per-token gradient of the full batch whatever the
   split into gradient-accumulation steps and processes.
2. Noise. Times and masks come from a `torch.Generator` seeded by `(seed, process, global step, micro-step)`:
   processes draw different noise, and a resumed run draws exactly the noise of an uninterrupted one.
3. Evaluation. `prediction_step` returns per-sequence NELBO sums (L_velocity included, `stratified_nelbo`),
   and `nelbo_metrics` turns them into `eval_nelbo = sum NELBO / sum |M|` over the whole set and
   `eval_ppl_bound = exp(eval_nelbo)`. Every evaluation uses importance-sampled times (an unbiased bound,
   whatever `time_sampling` training uses) and the same noise, so two checkpoints are compared on common
   random numbers.
4. Parameters. The scheduler parameters (g_φ, g_ψ or θ) get their own learning rate (by default 25x the
   backbone's for `per_position`, 1x for `lomdm`; see `SCHEDULER_LR_MULTIPLIERS`), and an exponential
   moving average of the weights (`hf_lomdm.ema`) is used for evaluation and by `save_model`.

Logged every `logging_steps`: `loss` is Trainer's mean of the backpropagated surrogate (its RLOO
score-function term has mean ~0 but large variance, so it jumps); `nelbo`, `main`, `velocity` are the NELBO
estimate and its parts L_main, L_velocity per token over the logging window (the numbers to watch); the
forward exponent `exponent_mean` / `exponent_std` over M; `scheduler_saturated_fraction`, the share of the
forward scheduler's NormSig sigmoids within 0.01 of 0 or 1 (a scheduler that saturates stops learning); and
`exponent_confidence_corr`: Pearson's r between the forward exponent e_i (the velocity A^i = e_i / t up to the
per-row time) and the denoiser's probability of the true token, over the masked positions (LoMDM's curriculum
signal: positive when easy tokens are revealed first).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import EvalPrediction, Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import logging

from .ema import EMA_WEIGHTS_NAME, EMACallback, ExponentialMovingAverage
from .objective import (
    TIME_UNIFORM_WEIGHT,
    Estimator,
    LoMDMLossOutput,
    TimeSampling,
    check_estimator_arguments,
    lomdm_loss,
    stratified_nelbo,
)
from .parameter_groups import is_scheduler_parameter
from .schedule_lomdm import saturated
from .units import perplexity

logger = logging.get_logger(__name__)

TRAINING_ARGS_JSON_NAME = "training_args.json"

# Additive statistics of training batches, summed over a logging window (see `_batch_statistics`).
_STATS = (
    "nelbo",
    "loss_main",
    "loss_velocity",
    "tokens",
    "exponent_sum",
    "exponent_square_sum",
    "exponent_count",
    "masked_count",
    "masked_exponent_sum",
    "masked_confidence_sum",
    "masked_exponent_confidence_sum",
    "masked_exponent_square_sum",
    "masked_confidence_square_sum",
    "saturated_count",
    "scored_count",
)


@dataclass
class LoMDMTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the LoMDM objective, scheduler learning rate, EMA and evaluation settings."""

    num_noise_samples: int = field(
        default=2, metadata={"help": "K noisy samples per sequence and step (RLOO needs K >= 2)."}
    )
    estimator: Estimator = field(
        default="rloo",
        metadata={
            "help": "'rloo' (score-function term with a leave-one-out baseline) or 'plain' (MDLM, K = 1)."
        },
    )
    time_sampling: TimeSampling = field(
        default="importance",
        metadata={
            "help": "Training times: 'importance' (unbiased over (0, 1]) or MDLM's 'uniform_eps' "
            "(not a bound)."
        },
    )
    time_uniform_weight: float = field(
        default=TIME_UNIFORM_WEIGHT,
        metadata={"help": "Weight of the uniform part of the importance mixture q(t) (SPEC §1)."},
    )
    noise_eps: float = field(
        default=1e-3, metadata={"help": "ε of time_sampling='uniform_eps': t ~ U(ε, 1)."}
    )
    scheduler_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the scheduler parameters (forward/reverse scheduler, position scores). "
            "None: 25 x `learning_rate` for per_position, 1 x for lomdm (measured; see "
            "`SCHEDULER_LR_MULTIPLIERS`). Follows the same warm-up and decay."
        },
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "EMA decay of the weights (e.g. 0.9999); the EMA weights are evaluated and saved by "
            "`save_model`. None disables it."
        },
    )
    eval_time_samples: int = field(
        default=1, metadata={"help": "Time samples per validation sequence (stratified in (0, 1])."}
    )

    def __post_init__(self) -> None:
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = (
                False  # every parameter gets a gradient each step: skip the search
            )
        super().__post_init__()
        check_estimator_arguments(
            self.num_noise_samples, self.estimator, self.time_sampling, num_samples_name="num_noise_samples"
        )
        if not 0.0 < self.time_uniform_weight <= 1.0:
            raise ValueError(f"`time_uniform_weight` must be in (0, 1], got {self.time_uniform_weight}.")
        if not 0.0 <= self.noise_eps < 1.0:
            raise ValueError(f"`noise_eps` must be in [0, 1), got {self.noise_eps}.")
        if self.scheduler_learning_rate is not None and not (
            math.isfinite(self.scheduler_learning_rate) and self.scheduler_learning_rate > 0
        ):
            raise ValueError(
                "`scheduler_learning_rate` must be a finite number > 0 (or None), got "
                f"{self.scheduler_learning_rate}; to freeze the schedulers, set their parameters' "
                "requires_grad=False."
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1), got {self.ema_decay}.")
        if self.eval_time_samples < 1:
            raise ValueError(f"`eval_time_samples` must be >= 1, got {self.eval_time_samples}.")


# Default scheduler learning rate as a multiple of the backbone's, per schedule (measured on the order
# tasks, `benchmarks/order_tasks.py`; README "Learned orders"). `per_position` has one score per position:
# Adam moves each by about the learning rate per step, so at the backbone's rate its exponents barely move in
# a few hundred steps (contrast 0.006 at 1x, 0.064 at 10x, 0.14 at 25x, 300 steps). `lomdm`'s scores come out
# of a network in which every weight moves by that much: at 10-25x they thrash from step to step and learn no
# order (contrast 0.000), at 1x they learn it.
SCHEDULER_LR_MULTIPLIERS = {"per_position": 25.0, "lomdm": 1.0}


def default_scheduler_learning_rate(schedule: str | None, learning_rate: float) -> float:
    """`scheduler_learning_rate` used when none is given: `learning_rate` times the schedule's multiplier."""
    return learning_rate * SCHEDULER_LR_MULTIPLIERS.get(schedule, 1.0)


def nelbo_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """Per-token NELBO over an evaluation set from `LoMDMTrainer.prediction_step` outputs.

    `predictions`: `(N, 3)` per-sequence [NELBO, L_main, L_velocity]; `label_ids`: `(N,)` |M| per sequence.
    `nelbo = sum NELBO / sum |M|` (tokens weigh equally, not sequences) with its standard error over
    sequences `nelbo_stderr` (Monte-Carlo and data sampling together); `ppl_bound = exp(nelbo)` bounds the
    perplexity from above; `loss` repeats `nelbo` so `metric_for_best_model="loss"` works.
    """
    per_sequence = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, 3)
    counts = np.asarray(eval_pred.label_ids, dtype=np.float64).reshape(-1)
    tokens = float(counts.sum())
    nelbo, main, velocity = (per_sequence.sum(0) / max(tokens, 1.0)).tolist()
    # Standard error of the ratio estimator sum NELBO / sum |M| over sequences (delta method).
    residuals = per_sequence[:, 0] - nelbo * counts
    n = len(counts)
    stderr = math.sqrt(n / max(n - 1, 1) * float((residuals**2).sum())) / max(tokens, 1.0)
    return {
        "loss": nelbo,
        "nelbo": nelbo,
        "nelbo_stderr": stderr,
        "main": main,
        "velocity": velocity,
        "ppl_bound": perplexity(nelbo),
        "tokens": tokens,
    }


def _batch_statistics(res: LoMDMLossOutput) -> torch.Tensor:
    """Additive float64 sums of one batch, keyed by name and stacked in the order of `_STATS`.

    NELBO terms and |M|; Σe, Σe² and the count over M; the moments (n, Σx, Σy, Σxy, Σx², Σy²) of x = e_i,
    y = p_θ(x_i | z_t) over the masked positions of the first noise sample, for Pearson's r; and the saturated
    scheduler sigmoids with the number of scores (zero for fixed schedules).
    """
    e = res.forward_exponents.double()
    in_m = res.noise_mask
    masked = ~torch.isnan(res.confidence)
    x, y = e[masked], res.confidence[masked].double()
    zero = torch.zeros((), device=e.device)
    scheduler = {"saturated_count": zero, "scored_count": zero}  # fixed schedule: no scheduler sigmoids
    if res.forward_scores is not None:
        scheduler = {"saturated_count": saturated(res.forward_scores, in_m).sum(), "scored_count": in_m.sum()}
    sums = {
        "nelbo": res.nelbo.sum(),
        "loss_main": res.loss_main.sum(),
        "loss_velocity": res.loss_velocity.sum(),
        "tokens": res.num_tokens.sum(),
        "exponent_sum": e[in_m].sum(),
        "exponent_square_sum": e[in_m].square().sum(),
        "exponent_count": in_m.sum(),
        "masked_count": masked.sum(),
        "masked_exponent_sum": x.sum(),
        "masked_confidence_sum": y.sum(),
        "masked_exponent_confidence_sum": (x * y).sum(),
        "masked_exponent_square_sum": x.square().sum(),
        "masked_confidence_square_sum": y.square().sum(),
        **scheduler,
    }
    return torch.stack([sums[name].double() for name in _STATS])


def _summarize(stats: torch.Tensor) -> dict[str, float]:
    """The logged statistics of a window's summed `_batch_statistics`."""
    s = dict(zip(_STATS, stats.tolist()))
    tokens = max(s["tokens"], 1.0)
    num_exponents, num_masked = max(s["exponent_count"], 1.0), max(s["masked_count"], 1.0)
    mean_e = s["exponent_sum"] / num_exponents
    logs = {
        "nelbo": s["nelbo"] / tokens,
        "main": s["loss_main"] / tokens,
        "velocity": s["loss_velocity"] / tokens,
        "exponent_mean": mean_e,
        "exponent_std": math.sqrt(max(s["exponent_square_sum"] / num_exponents - mean_e**2, 0.0)),
    }
    if s["scored_count"] > 0:
        logs["scheduler_saturated_fraction"] = s["saturated_count"] / s["scored_count"]
    mean_x, mean_y = s["masked_exponent_sum"] / num_masked, s["masked_confidence_sum"] / num_masked
    cov = s["masked_exponent_confidence_sum"] / num_masked - mean_x * mean_y
    var_x = s["masked_exponent_square_sum"] / num_masked - mean_x**2
    var_y = s["masked_confidence_square_sum"] / num_masked - mean_y**2
    if var_x > 1e-12 and var_y > 1e-12:  # undefined for fixed schedules (every e equal)
        logs["exponent_confidence_corr"] = cov / math.sqrt(var_x * var_y)
    return logs


class LoMDMTrainer(Trainer):
    """`transformers.Trainer` for `LoMDMForMaskedDiffusion` (see the module docstring for what changes).

    Takes the usual `Trainer` arguments; `args` should be `LoMDMTrainingArguments` and the batches need
    `input_ids`, `attention_mask` and `labels` (-100 where nothing may be noised), as produced by
    `hf_lomdm.data.DataCollatorForMaskedDiffusion`. `compute_metrics` defaults to `nelbo_metrics`; a custom
    one receives the same per-sequence statistics. `allowed_tokens` (bool `(L, V)`, optional) restricts the
    denoiser's softmax at each position to those tokens in training and evaluation (see `lomdm_loss`).
    """

    def __init__(self, *args: Any, allowed_tokens: torch.Tensor | None = None, **kwargs: Any):
        if kwargs.get("compute_metrics") is None:
            kwargs["compute_metrics"] = nelbo_metrics
        super().__init__(*args, **kwargs)
        # Bool (L, V): the tokens each position may take, for training and evaluation (e.g. a table's columns).
        self.allowed_tokens = None if allowed_tokens is None else allowed_tokens.to(self.args.device)
        if not isinstance(self.args, LoMDMTrainingArguments):
            raise TypeError(f"`args` must be LoMDMTrainingArguments, got {type(self.args).__name__}.")
        if self.args.n_gpu > 1:
            raise ValueError(
                f"torch.nn.DataParallel over {self.args.n_gpu} GPUs is not supported; "
                "launch one process per GPU with `accelerate launch` (DDP) instead."
            )
        if self.args.batch_eval_metrics:
            raise ValueError(
                "`batch_eval_metrics=True` is not supported: the NELBO is summed over the whole set."
            )
        if self.is_fsdp_enabled and self.args.ema_decay is not None:
            raise ValueError(
                f"`ema_decay={self.args.ema_decay}` is not supported with FSDP (sharded weights)."
            )
        # Our loss is normalised by `num_items_in_batch` whenever Trainer passes it (counted from `labels`).
        self.model_accepts_loss_kwargs = True
        if self.args.label_names is None:
            self.label_names = ["labels"]  # keeps a `labels` column of the data set (e.g. prompt masking)
        self._ema = ExponentialMovingAverage(self.args.ema_decay) if self.args.ema_decay is not None else None
        if self._ema is not None:
            self.add_callback(EMACallback(self._ema))
        self._train_stats: torch.Tensor | None = None
        self._noise_step, self._micro_step = -1, 0
        self._eval_generator: torch.Generator | None = None
        self._scheduler_group: int | None = (
            None  # index of the scheduler's optimizer group, when it has its own
        )

    # ---- noise ----------------------------------------------------------------------------------------

    def _generator(self, device: torch.device, *stream: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.args.seed, self.args.process_index, *stream]).generate_state(1)[0]
        return torch.Generator(device=device).manual_seed(int(seed))

    def _training_generator(self, device: torch.device) -> torch.Generator:
        """Noise of one micro-batch, a function of (seed, process, global step, micro-step) only."""
        step = self.state.global_step
        self._micro_step = self._micro_step + 1 if step == self._noise_step else 0
        self._noise_step = step
        return self._generator(device, 0, step, self._micro_step)

    # ---- loss -----------------------------------------------------------------------------------------

    def _objective(
        self, objective: Callable[..., Any], model: nn.Module, inputs: dict[str, torch.Tensor], **kwargs: Any
    ) -> Any:
        """`objective` (`lomdm_loss` or `stratified_nelbo`) of a batch with the training arguments' times.

        The objective calls the wrapped model once per step (`model(x, noise=...)`), so DDP's gradient reduction,
        FSDP's unsharding, PEFT and accelerate's autocast all apply without special cases.
        """
        return objective(
            model,
            inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            labels=inputs.get("labels"),
            uniform_weight=self.args.time_uniform_weight,
            eps=self.args.noise_eps,
            allowed_tokens=self.allowed_tokens,
            **kwargs,
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, LoMDMLossOutput]:
        """The LoMDM surrogate of one micro-batch, scaled so that accumulated micro-batches give the per-token
        mean.

        `res.loss = S / n` (S = summed surrogate, n = this micro-batch's |M|); the returned loss is
        `S / num_items_in_batch`, times the number of processes when `num_items_in_batch` counts all of them
        (DDP averages gradients over processes). Without `num_items_in_batch` it is `res.loss` and Trainer
        divides by the accumulation steps.
        """
        res = self._objective(
            lomdm_loss,
            model,
            inputs,
            num_samples=self.args.num_noise_samples,
            estimator=self.args.estimator,
            time_sampling=self.args.time_sampling,
            generator=self._training_generator(inputs["input_ids"].device),
        )
        stats = _batch_statistics(res)
        self._train_stats = stats if self._train_stats is None else self._train_stats + stats
        loss = res.loss
        if num_items_in_batch is not None:
            loss = loss * res.num_tokens.sum() / torch.as_tensor(num_items_in_batch).clamp(min=1)
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
        return (loss, res) if return_outputs else loss

    # ---- optimizer ------------------------------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer; the scheduler parameters get their own groups at `scheduler_learning_rate` (or
        the schedule's default, see `default_scheduler_learning_rate`) when it differs from `learning_rate`."""
        opt_model = self.model if model is None else model
        scheduler_lr = self.args.scheduler_learning_rate
        if scheduler_lr is None:
            schedule = getattr(getattr(opt_model, "config", None), "schedule", None)
            scheduler_lr = default_scheduler_learning_rate(schedule, self.args.learning_rate)
        if self.optimizer is None and scheduler_lr != self.args.learning_rate:
            decay = set(self.get_decay_parameter_names(opt_model))
            groups = []
            for scheduler_group in (False, True):
                for with_decay in (True, False):
                    params = [
                        p
                        for name, p in opt_model.named_parameters()
                        if p.requires_grad
                        and is_scheduler_parameter(name) == scheduler_group
                        and (name in decay) == with_decay
                    ]
                    if params:
                        group = {
                            "params": params,
                            "weight_decay": self.args.weight_decay if with_decay else 0.0,
                        }
                        if scheduler_group:
                            group["lr"] = scheduler_lr
                        groups.append(group)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if {"params", "model", "optimizer_dict"} & optimizer_kwargs.keys():
                raise ValueError(
                    f"`scheduler_learning_rate` is not supported with optim={self.args.optim!r}."
                )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            if "lr" in groups[-1]:
                self._scheduler_group = len(groups) - 1
        return super().create_optimizer(model)

    # ---- evaluation -----------------------------------------------------------------------------------

    def evaluation_weights(self) -> contextlib.AbstractContextManager:
        """Context in which `self.model` holds the weights that are evaluated and saved (the EMA, if any)."""
        return self._ema.applied(self.model) if self._ema is not None else contextlib.nullcontext()

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        """Trainer's loop, with the EMA weights loaded and the evaluation noise reset (common random
        numbers)."""
        self._eval_generator = None
        with self.evaluation_weights():
            return super().evaluation_loop(*args, **kwargs)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[None, torch.Tensor, torch.Tensor]:
        """Per-sequence NELBO statistics of one evaluation batch: `(None, stats (B, 3), num_tokens (B,))`.

        `stats` holds [NELBO, L_main, L_velocity] per sequence, each the mean over `eval_time_samples`
        stratified importance-sampled times (`stratified_nelbo`). No loss is returned: `eval_loss` is then the
        exact per-token NELBO from `nelbo_metrics` instead of Trainer's mean of batch means.
        `prediction_loss_only` is ignored: the statistics are the evaluation.
        """
        inputs = self._prepare_inputs(inputs)
        if self._eval_generator is None:
            self._eval_generator = self._generator(inputs["input_ids"].device, 1)
        with torch.no_grad():
            samples = self._objective(
                stratified_nelbo,
                model,
                inputs,
                time_samples=self.args.eval_time_samples,
                time_sampling="importance",
                generator=self._eval_generator,
            )
        stats = torch.stack([samples.nelbo, samples.loss_main, samples.loss_velocity], dim=-1)  # (R, B, 3)
        return None, stats.mean(0), samples.num_tokens

    # ---- checkpoints, EMA and logging -----------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model; a call from user code saves the EMA weights (with `ema_decay`) and writes the
        training arguments as `training_args.json` instead of Trainer's pickled `training_args.bin`.

        Checkpoints (`_internal_call=True`) keep the raw weights and the pickle, which resuming needs, and
        store the EMA beside them as `ema.safetensors`.
        """
        if _internal_call:
            return super().save_model(output_dir, _internal_call)
        with self.evaluation_weights():
            super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            # A folder meant for the Hub holds no pickle: Trainer's `training_args.bin` becomes JSON.
            folder = output_dir if output_dir is not None else self.args.output_dir
            pickled = os.path.join(folder, TRAINING_ARGS_NAME)
            if os.path.isfile(pickled):
                os.remove(pickled)
            with open(os.path.join(folder, TRAINING_ARGS_JSON_NAME), "w", encoding="utf-8") as f:
                f.write(self.args.to_json_string() + "\n")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        ema_path = os.path.join(resume_from_checkpoint, EMA_WEIGHTS_NAME)
        if self._ema is not None and os.path.isfile(ema_path):
            self._ema.load(ema_path, self.model)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log; training logs also get the objective's statistics since the previous log."""
        if "loss" in logs and self._train_stats is not None:
            stats = self._train_stats
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            logs.update(_summarize(stats))
            self._train_stats = None
            if self._scheduler_group is not None and "learning_rate" in logs:
                # Trainer logs the rate the step used; every group follows the same multiplicative schedule.
                groups = self.optimizer.param_groups
                ratio = groups[self._scheduler_group]["initial_lr"] / groups[0]["initial_lr"]
                logs["scheduler_learning_rate"] = logs["learning_rate"] * ratio
        super().log(logs, start_time)


__all__ = [
    "SCHEDULER_LR_MULTIPLIERS",
    "LoMDMTrainer",
    "LoMDMTrainingArguments",
    "default_scheduler_learning_rate",
    "nelbo_metrics",
]
