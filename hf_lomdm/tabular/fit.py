"""A LoMDM on column tokens: `train_tabular_model`, `column_exponents` and `sample_token_rows`.

Shapes: N = rows, L = columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import EarlyStoppingCallback, PrinterCallback

from ..data import DataCollatorForMaskedDiffusion
from ..trainer import LoMDMTrainer, LoMDMTrainingArguments
from .tokenizer import TabularTokenizer


@dataclass
class TabularTrainResult:
    """Outcome of `train_tabular_model`.

    Args:
        best_nelbo_per_row: lowest validation NELBO per row seen (importance-sampled bound, nats); the model
            holds the weights of that evaluation.
        best_step: the training step of that evaluation.
        history: `(step, validation NELBO per row)` of every evaluation.
        stopped_step: the last training step (`max_steps` unless early stopping ended the run).
        stopped_early: whether `early_stopping_patience` ended the run before `max_steps`.
    """

    best_nelbo_per_row: float
    best_step: int
    history: list[tuple[int, float]]
    stopped_step: int
    stopped_early: bool


def train_tabular_model(
    model,
    train_ids: torch.LongTensor,
    val_ids: torch.LongTensor,
    *,
    output_dir: str | Path,
    max_steps: int,
    eval_steps: int | None = None,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    scheduler_learning_rate: float | None = None,
    eval_time_samples: int = 4,
    seed: int = 0,
    allowed_tokens: torch.Tensor | None = None,
    early_stopping_patience: int | None = None,
    **training_kwargs: Any,
) -> TabularTrainResult:
    """Train on column tokens with `LoMDMTrainer` (the package's objective, K = 2 RLOO for every schedule) and
    keep the weights of the best validation NELBO.

    Args:
        model: a `LoMDMForMaskedDiffusion` whose config comes from `TabularTokenizer.config_kwargs()`.
        train_ids, val_ids: `(N, L)` token rows from `TabularTokenizer.encode`.
        output_dir: where the trainer writes its checkpoints.
        max_steps: optimizer steps.
        eval_steps: evaluate (and checkpoint) every this many steps; None evaluates once, at the end.
        batch_size: rows per step.
        learning_rate: AdamW learning rate of the denoiser.
        scheduler_learning_rate: learning rate of the schedule parameters (None: `learning_rate`).
        eval_time_samples: importance-sampled times per validation row and evaluation.
        seed: trainer seed (noise and data order).
        allowed_tokens: `TabularTokenizer.allowed_tokens()` to restrict each column's softmax to its own tokens
            (the NELBO is then over the column's vocabulary); None: the whole shared vocabulary.
        early_stopping_patience: stop once this many evaluations in a row have not lowered the best validation
            NELBO (transformers' `EarlyStoppingCallback`; needs `eval_steps`); None: train for `max_steps`.
        training_kwargs: further `LoMDMTrainingArguments` fields.
    """
    if early_stopping_patience is not None:
        if early_stopping_patience < 1:
            raise ValueError(f"`early_stopping_patience` must be >= 1, got {early_stopping_patience}.")
        if eval_steps is None:
            raise ValueError("`early_stopping_patience` needs `eval_steps` (evaluations to compare).")
    every = eval_steps or max_steps
    args = LoMDMTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(batch_size, 1024 // eval_time_samples),
        learning_rate=learning_rate,
        scheduler_learning_rate=scheduler_learning_rate,
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="nelbo",
        greater_is_better=False,
        eval_time_samples=eval_time_samples,
        logging_steps=every,
        report_to=[],
        disable_tqdm=True,
        seed=seed,
        **{"dataloader_pin_memory": torch.cuda.is_available(), **training_kwargs},
    )
    trainer = LoMDMTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": train_ids.tolist()}),
        eval_dataset=Dataset.from_dict({"input_ids": val_ids.tolist()}),
        data_collator=DataCollatorForMaskedDiffusion(pad_token_id=model.config.mask_token_id),
        allowed_tokens=allowed_tokens,
        callbacks=None
        if early_stopping_patience is None
        else [EarlyStoppingCallback(early_stopping_patience=early_stopping_patience)],
    )
    # `disable_tqdm` swaps the progress bar for a callback printing every log dict; the history is returned.
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    model.eval()
    num_columns = train_ids.shape[1]
    history = [
        (log["step"], log["eval_nelbo"] * num_columns)
        for log in trainer.state.log_history
        if "eval_nelbo" in log
    ]
    best_step, best = min(history, key=lambda item: item[1])
    stopped_step = trainer.state.global_step
    return TabularTrainResult(
        best_nelbo_per_row=best,
        best_step=best_step,
        history=history,
        stopped_step=stopped_step,
        stopped_early=stopped_step < max_steps,
    )


@torch.no_grad()
def column_exponents(model, input_ids: torch.LongTensor) -> torch.Tensor:
    """`(L,)` forward exponent e_ℓ of each column, averaged over the rows of `input_ids` (it is the same for
    every row unless the schedule is `lomdm`). Larger e_ℓ = revealed earlier in generation (t*_ℓ = u^{1/e_ℓ}).
    """
    device = next(model.parameters()).device
    return model.forward_exponents(input_ids.to(device)).float().mean(0).cpu()


@torch.no_grad()
def sample_token_rows(
    model,
    tokenizer: TabularTokenizer,
    num_rows: int,
    *,
    batch_size: int = 1024,
    generator: torch.Generator | None = None,
    **generate_kwargs: Any,
) -> torch.LongTensor:
    """Sample `(num_rows, L)` column tokens: `model.generate` infills all-mask rows.

    The default is `order="learned", steps=None`, the exact first-hitting sampler (for `per_position`:
    Algorithm 1 of arXiv 2511.19152). Each column's softmax spans its own tokens only (`allowed_tokens`), so
    every sampled row is valid by construction; a model trained without the restriction is sampled from its
    distribution renormalised over each column.

    Args:
        model: a `LoMDMForMaskedDiffusion` trained on `tokenizer`'s rows.
        tokenizer: the table's tokenizer.
        num_rows: rows to draw.
        batch_size: rows per `generate` call.
        generator: `torch.Generator` for reproducible samples.
        generate_kwargs: `LoMDMGenerationConfig` fields overriding `order="learned", steps=None`.
    """
    if num_rows < 1:
        raise ValueError(f"`num_rows` must be >= 1, got {num_rows}.")
    device = next(model.parameters()).device
    settings = {"order": "learned", "steps": None, **generate_kwargs}
    allowed_tokens = tokenizer.allowed_tokens().to(device)
    batches = []
    for start in range(0, num_rows, batch_size):
        canvas = torch.full(
            (min(batch_size, num_rows - start), tokenizer.num_columns),
            tokenizer.mask_token_id,
            dtype=torch.long,
            device=device,
        )
        batches.append(
            model.generate(canvas, generator=generator, allowed_tokens=allowed_tokens, **settings).cpu()
        )
    return torch.cat(batches)


__all__ = ["TabularTrainResult", "column_exponents", "sample_token_rows", "train_tabular_model"]
