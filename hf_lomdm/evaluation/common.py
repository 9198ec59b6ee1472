"""What the evaluation jobs share: the data forms they accept, their padding, and eval mode for one block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..data import DataCollatorForMaskedDiffusion

__all__ = ["as_rows", "eval_mode", "padding_collator"]


def as_rows(data, tokenizer, max_length: int | None) -> list[dict[str, torch.Tensor]]:
    """Normalise texts / token-id lists / a `datasets.Dataset` / a `(B, L)` tensor into per-sequence rows."""
    if isinstance(data, torch.Tensor):
        data = data.tolist()
    if isinstance(data, str):
        data = [data]
    rows = []
    for item in data:
        if isinstance(item, str):
            if tokenizer is None:
                raise ValueError("texts need a `tokenizer`; pass token ids or a tokenizer.")
            item = {"input_ids": tokenizer(item, add_special_tokens=True)["input_ids"]}
        elif not isinstance(item, dict):
            item = {"input_ids": list(item)}
        row = {
            key: torch.as_tensor(item[key])
            for key in ("input_ids", "attention_mask", "labels")
            if key in item
        }
        if max_length is not None and row["input_ids"].numel() > max_length:
            raise ValueError(
                f"a sequence has {row['input_ids'].numel()} tokens > max_length={max_length}; pack or split the data "
                "first (e.g. with `hf_lomdm.data`) so that nothing is silently truncated."
            )
        if row["input_ids"].numel() == 0:
            continue
        rows.append(row)
    if not rows:
        raise ValueError("no non-empty sequence to evaluate.")
    return rows


def padding_collator(model) -> DataCollatorForMaskedDiffusion:
    """Right padding with the model's pad id (0 without one): padding is excluded from M."""
    pad_id = model.config.pad_token_id
    return DataCollatorForMaskedDiffusion(pad_id if pad_id is not None else 0)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode (no dropout) inside the block, back in the mode it was in after it, also on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
