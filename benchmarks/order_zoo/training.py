"""The training settings every order benchmark shares (`order_tasks.py`, `order_zoo_table.py`)."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from transformers import TrainingArguments

from hf_lomdm.trainer import LoMDMTrainingArguments


def training_arguments(
    name: str, seed: int, args: Namespace, cls: type[TrainingArguments] = LoMDMTrainingArguments, **extra: Any
) -> TrainingArguments:
    """`cls` arguments of one CPU run `name` (its output folder `/tmp/{name}-{seed}`): `args.steps` steps of
    `args.batch_size` rows at `args.learning_rate` (10% warmup, cosine decay), no checkpoints, ten log lines;
    `extra` adds or overrides fields (e.g. `scheduler_learning_rate`)."""
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
    return cls(**{**settings, **extra})


__all__ = ["training_arguments"]
