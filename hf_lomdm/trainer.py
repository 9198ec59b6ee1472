"""Training LoMDM with `transformers.Trainer`.

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
   backbone's for `per_position`, 1x for `lomdm`; see `schedule_lomdm.SCHEDULES`), and an exponential
   moving average of the weights (`hf_lomdm.ema`) is used for evaluation and by `save_model`.

Logged every `logging_steps`, each quantity once: `loss` is Trainer's mean of the per-step losses, equal in
value to the NELBO estimate (the score-function parts of the objective have value 0: they only carry gradient),
so train `loss` and `eval_loss` measure the same thing; `nelbo` is the NELBO per token over the logging window
(token-weighted) and `velocity` its L_velocity part (L_main = `nelbo` - `velocity`); the
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
from transformers import Trainer, TrainingArguments
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
    update_token_baseline,
)
from .parameter_groups import is_scheduler_parameter
from .schedule_lomdm import SCHEDULES
from .trainer_logs import batch_statistics, nelbo_metrics, summarize, without_repeats

logger = logging.get_logger(__name__)

TRAINING_ARGS_JSON_NAME = "training_args.json"


@dataclass
class LoMDMTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the LoMDM objective, scheduler learning rate, EMA and evaluation settings."""

    num_noise_samples: int = field(
        default=2,
        metadata={
            "help": "K noisy samples per sequence and step ('rloo' needs K >= 2). K = 1 with 'tcv' halves the "
            "noisy passes, but its denoiser gradient is noisier: a worse bound at equal steps (docs/objective.md)."
        },
    )
    estimator: Estimator = field(
        default="tcv",
        metadata={
            "help": "Gradient estimator of the learned exponents: 'rloo' (leave-one-out baseline, K >= 2), "
            "'ptcv' (per-token baseline), 'tcv' (token control variate, any K) or 'plain' (MDLM, no "
            "score-function term)."
        },
    )
    token_baseline_decay: float = field(
        default=0.9,
        metadata={
            "help": "EMA decay of the per-token loss table that 'ptcv' / 'tcv' use as control variate (updated "
            "after each step from its masked positions)."
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
        metadata={"help": "Weight of the uniform part of the importance mixture q(t)."},
    )
    noise_eps: float = field(
        default=1e-3, metadata={"help": "ε of time_sampling='uniform_eps': t ~ U(ε, 1)."}
    )
    scheduler_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the scheduler parameters (forward/reverse scheduler, position scores). "
            "None: 25 x `learning_rate` for per_position, 1 x for lomdm (measured; see "
            "`schedule_lomdm.SCHEDULES`). Follows the same warm-up and decay."
        },
    )
    scheduler_max_grad_norm: float | None = field(
        default=None,
        metadata={
            "help": "Gradient-norm clip of the scheduler parameters, applied separately from the backbone's "
            "`max_grad_norm` (the scheduler's noisy score-function gradient then cannot shrink the backbone's "
            "update). None: the same value as `max_grad_norm`; 0: no clip. Ignored under FSDP (one joint clip)."
        },
    )
    scheduler_start_step: int = field(
        default=0,
        metadata={
            "help": "Optimizer step at which the schedulers start to learn; before it their gradients are "
            "zeroed (the schedule stays as initialised, e = c1), so no noise accumulates in Adam's moments "
            "while the denoiser does not yet use context and the true scheduler gradient is ~0."
        },
    )
    scheduler_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Steps over which the scheduler learning rate ramps linearly from 0 after "
            "`scheduler_start_step` (on top of the common warm-up and decay)."
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
        if not 0.0 <= self.token_baseline_decay < 1.0:
            raise ValueError(f"`token_baseline_decay` must be in [0, 1), got {self.token_baseline_decay}.")
        if self.scheduler_max_grad_norm is not None and not self.scheduler_max_grad_norm >= 0:
            raise ValueError(
                f"`scheduler_max_grad_norm` must be >= 0 (or None), got {self.scheduler_max_grad_norm}."
            )
        for name in ("scheduler_start_step", "scheduler_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1), got {self.ema_decay}.")
        if self.eval_time_samples < 1:
            raise ValueError(f"`eval_time_samples` must be >= 1, got {self.eval_time_samples}.")


def default_scheduler_learning_rate(schedule: str | None, learning_rate: float) -> float:
    """`scheduler_learning_rate` used when none is given: `learning_rate` times the schedule kind's multiplier
    (`schedule_lomdm.SCHEDULES`, where the multipliers' measurements are written; 1 for an unknown schedule)."""
    kind = SCHEDULES.get(schedule)
    return learning_rate * (1.0 if kind is None else kind.scheduler_lr_multiplier)


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
        # Indices of the schedulers' optimizer groups, when they have their own.
        self._scheduler_groups: list[int] = []
        # (V,) the ptcv / tcv control variate, see `_token_baseline_for`.
        self._token_baseline: torch.Tensor | None = None
        # Pre-clip scheduler gradient norms since the last log, and the schedulers' rate at the last step.
        self._scheduler_grad_norm: list[float] = []
        self._scheduler_lr_used: float | None = None

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
            token_baseline=self._token_baseline_for(inputs["input_ids"].device),
        )
        if self._token_baseline is not None and model.training:
            self._token_baseline = update_token_baseline(
                self._token_baseline, res, self.args.token_baseline_decay
            )
        stats = batch_statistics(res)
        self._train_stats = stats if self._train_stats is None else self._train_stats + stats
        loss = res.loss
        if num_items_in_batch is not None:
            loss = loss * res.num_tokens.sum() / torch.as_tensor(num_items_in_batch).clamp(min=1)
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
        return (loss, res) if return_outputs else loss

    def _token_baseline_for(self, device: torch.device) -> torch.Tensor | None:
        """The `(V,)` per-token loss table of `ptcv` / `tcv` (None for the other estimators).

        It starts at log V for every token (a uniform denoiser's loss: z-free, as the estimators need) and follows
        an EMA of the losses of past steps (`update_token_baseline`); each process keeps its own, and checkpoints
        store it (`token_baseline.pt`) so a resumed run continues with the same table.
        """
        if self.args.estimator not in ("ptcv", "tcv"):
            return None
        if self._token_baseline is None:
            vocab_size = self.model.config.vocab_size
            self._token_baseline = torch.full((vocab_size,), math.log(vocab_size), device=device)
        return self._token_baseline

    # ---- optimizer ------------------------------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer; the scheduler parameters get their own groups at `scheduler_learning_rate` (or
        the schedule's default, see `default_scheduler_learning_rate`) when it differs from `learning_rate`."""
        opt_model = self.model if model is None else model
        scheduler_lr = self.args.scheduler_learning_rate
        if scheduler_lr is None:
            schedule = getattr(getattr(opt_model, "config", None), "schedule", None)
            scheduler_lr = default_scheduler_learning_rate(schedule, self.args.learning_rate)
        own_schedule = self.args.scheduler_start_step > 0 or self.args.scheduler_warmup_steps > 0
        if self.optimizer is None and (scheduler_lr != self.args.learning_rate or own_schedule):
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
            # Before the optimizer is built: it fills every group's missing keys ("lr" included) in place.
            self._scheduler_groups = [i for i, group in enumerate(groups) if "lr" in group]
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            self.optimizer.register_step_pre_hook(self._before_optimizer_step)
        return super().create_optimizer(model)

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Before each optimizer step: note the schedulers' learning rate (for the log) and, before
        `scheduler_start_step`, zero their gradients so Adam's moments stay at 0 until they start."""
        self._scheduler_lr_used = optimizer.param_groups[self._scheduler_groups[-1]]["lr"]
        if self.state.global_step < self.args.scheduler_start_step:
            for index in self._scheduler_groups:
                for p in optimizer.param_groups[index]["params"]:
                    if p.grad is not None:
                        p.grad.zero_()

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """Trainer's learning-rate schedule; the scheduler groups' rate is also 0 before `scheduler_start_step`
        and ramps linearly over `scheduler_warmup_steps` after it."""
        lr_scheduler = super().create_scheduler(num_training_steps, optimizer)
        start, ramp = self.args.scheduler_start_step, self.args.scheduler_warmup_steps
        if self._scheduler_groups and (start > 0 or ramp > 0):
            if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
                raise ValueError(
                    "`scheduler_start_step` / `scheduler_warmup_steps` need a LambdaLR learning-rate schedule, "
                    f"got lr_scheduler_type={self.args.lr_scheduler_type!r}."
                )
            for index in self._scheduler_groups:
                lr_scheduler.lr_lambdas[index] = _delayed(lr_scheduler.lr_lambdas[index], start, ramp)
            for group, lr_lambda in zip(lr_scheduler.optimizer.param_groups, lr_scheduler.lr_lambdas):
                group["lr"] = group["initial_lr"] * lr_lambda(lr_scheduler.last_epoch)  # the step-0 rate
        return lr_scheduler

    def _clip_grad_norm(self, model: nn.Module):
        """Clip the backbone's and the schedulers' gradients separately; returns the backbone's pre-clip norm.

        The scheduler's score-function gradient is noisy and can be many times the backbone's; under one joint
        clip it shrinks every backbone update. Under FSDP (sharded gradients) Trainer's joint clip is used.
        """
        if self.is_fsdp_enabled:
            return super()._clip_grad_norm(model)
        backbone, schedulers = [], []
        for name, p in model.named_parameters():
            if p.grad is not None:
                (schedulers if is_scheduler_parameter(name) else backbone).append(p)
        if not schedulers:
            return super()._clip_grad_norm(model)
        limit = self.args.scheduler_max_grad_norm
        limit = self.args.max_grad_norm if limit is None else limit
        norm = self.accelerator.clip_grad_norm_(schedulers, limit if limit > 0 else math.inf)
        self._scheduler_grad_norm.append(float(norm))
        return self.accelerator.clip_grad_norm_(backbone, self.args.max_grad_norm)

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

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self._token_baseline is not None:  # per process: each keeps its own table
            folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            torch.save(self._token_baseline.cpu(), os.path.join(folder, _token_baseline_name(self.args)))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        ema_path = os.path.join(resume_from_checkpoint, EMA_WEIGHTS_NAME)
        if self._ema is not None and os.path.isfile(ema_path):
            self._ema.load(ema_path, self.model)
        baseline_path = os.path.join(resume_from_checkpoint, _token_baseline_name(self.args))
        if os.path.isfile(baseline_path):
            self._token_baseline = torch.load(baseline_path, weights_only=True).to(self.args.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log; training logs also get the objective's statistics since the previous log."""
        if "loss" in logs and self._train_stats is not None:
            stats = self._train_stats
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            logs.update(summarize(stats))
            self._train_stats = None
            if self._scheduler_lr_used is not None and "learning_rate" in logs:
                logs["scheduler_learning_rate"] = self._scheduler_lr_used  # the rate the last step used
            if self._scheduler_grad_norm:
                logs["scheduler_grad_norm"] = float(np.median(self._scheduler_grad_norm))
                self._scheduler_grad_norm = []
        super().log(logs, start_time)

    def log_metrics(self, split: str, metrics: dict[str, float]) -> None:
        """Trainer's end-of-run block, each quantity once: `eval_loss`, a copy of `eval_nelbo` kept in the
        metrics for `metric_for_best_model`, is not printed (`trainer_logs.without_repeats`)."""
        super().log_metrics(split, without_repeats(metrics))

    def save_metrics(self, split: str, metrics: dict[str, float], combined: bool = True) -> None:
        """Trainer's `{split}_results.json` (and `all_results.json`), each quantity once as in `log_metrics`."""
        super().save_metrics(split, without_repeats(metrics), combined=combined)


def _token_baseline_name(args: TrainingArguments) -> str:
    """File of a process's token baseline table inside a checkpoint."""
    return "token_baseline.pt" if args.world_size == 1 else f"token_baseline_{args.process_index}.pt"


def _delayed(lr_lambda: Callable[[int], float], start: int, ramp: int) -> Callable[[int], float]:
    """`lr_lambda` times 0 before `start`, then a linear ramp to 1 over `ramp` steps."""

    def delayed(step: int) -> float:
        if step < start:
            return 0.0
        return lr_lambda(step) * (min(1.0, (step - start + 1) / ramp) if ramp > 0 else 1.0)

    return delayed


__all__ = [
    "LoMDMTrainer",
    "LoMDMTrainingArguments",
    "default_scheduler_learning_rate",
    "nelbo_metrics",
]
