"""The training settings every order benchmark shares (`order_tasks.py`, `order_zoo_table.py`)."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from typing import Any

from transformers import TrainingArguments

from hf_lomdm.trainer import LoMDMTrainingArguments


def add_training_flags(parser: ArgumentParser, steps: int) -> None:
    """The flags `training_arguments` reads: model size (`--hidden_size`, `--layers`) and optimisation (`--steps`,
    default `steps`; `--batch_size`, `--learning_rate`, `--scheduler_learning_rate`)."""
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument(
        "--scheduler_learning_rate",
        type=float,
        default=None,
        help="default: the package's LoMDMTrainingArguments default",
    )


def training_arguments(
    name: str, seed: int, args: Namespace, cls: type[TrainingArguments] = LoMDMTrainingArguments, **extra: Any
) -> TrainingArguments:
    """`cls` arguments of one CPU run `name` (its output folder `/tmp/{name}-{seed}`): `args.steps` steps of
    `args.batch_size` rows at `args.learning_rate` (10% warmup, cosine decay), no checkpoints, ten log lines;
    for `LoMDMTrainingArguments` also `args.scheduler_learning_rate` when it is set; `extra` adds or overrides
    fields."""
    settings = dict(
        output_dir=f"/tmp/{name}-{seed}",
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.steps // 10,
        lr_scheduler_type="cosine",
        logging_steps=max(args.steps // 10, 1),
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        disable_tqdm=True,
    )
    if issubclass(cls, LoMDMTrainingArguments) and getattr(args, "scheduler_learning_rate", None):
        settings["scheduler_learning_rate"] = args.scheduler_learning_rate
    return cls(**{**settings, **extra})


__all__ = ["add_training_flags", "training_arguments"]
