"""Context use: does the denoiser use context at all?

`context_use` compares the masked-token loss with one token masked against everything masked (and random
fractions between): a ratio loss(one) / loss(all) ≈ 1 means unigram level, whatever the NELBO.

Shapes: B = batch, L = length, V = vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from transformers.utils import logging

from ..objective import targets_and_noise_mask
from .common import as_rows, eval_mode, padding_collator

__all__ = ["ContextFraction", "ContextUseResult", "context_use"]


ContextFraction = float | Literal["one", "all"]


@dataclass
class ContextUseResult:
    """How much the denoiser uses context: masked-token loss as a function of how much is masked.

    Labels: `"one"` (each scored token masked alone, everything else visible), `"15%"`-style labels for a
    random fraction of the noisable positions masked, `"all"` (every noisable position masked).

    Args:
        loss: `{label: mean -log p_θ(x_i | z)}` over the masked tokens (nats per token).
        stderr: `{label: standard error of loss}`, rows treated as independent clusters.
        num_tokens: `{label: tokens scored}`.
        ratio: loss("one") / loss("all") over the same scored tokens (paired, so the choice of tokens cancels),
            `None` unless both were requested. ≈ 1: context is not used (a unigram-level model); lower is better.
        ratio_stderr: its standard error (delta method, rows as clusters).
        num_sequences: rows evaluated.
    """

    loss: dict[str, float]
    stderr: dict[str, float]
    num_tokens: dict[str, int]
    ratio: float | None
    ratio_stderr: float | None
    num_sequences: int

    def to_dict(self) -> dict:
        return asdict(self)


def _fraction_label(fraction: ContextFraction) -> str:
    if fraction in ("one", "all"):
        return fraction
    if isinstance(fraction, str) or not 0.0 < fraction < 1.0:
        raise ValueError(f"each of `fractions` must be 'one', 'all' or a float in (0, 1), got {fraction!r}.")
    return f"{100 * fraction:g}%"


def _random_subset(noise_mask: torch.Tensor, size: torch.Tensor, generator) -> torch.Tensor:
    """`(B, L)` bool: `size[b]` positions of row b drawn uniformly without replacement from `noise_mask[b]`."""
    device = generator.device if generator is not None else noise_mask.device
    keys = torch.rand(noise_mask.shape, generator=generator, device=device).to(noise_mask.device)
    keys = keys.masked_fill(~noise_mask, 2.0)  # positions outside M rank last
    rank = keys.argsort(-1).argsort(-1)  # (B, L)
    return (rank < size[:, None]) & noise_mask


def _masked_nll(model, input_ids, attention_mask, noise_mask, z_is_mask) -> torch.Tensor:
    """`(B, L)` -log p_θ(x_i | z) at the masked positions of z (0 elsewhere); one denoiser pass."""
    z = input_ids.masked_fill(z_is_mask, model.config.mask_token_id)
    timesteps = None
    if model.is_time_conditioned:  # a time-conditioned backbone is told the fraction actually masked
        timesteps = z_is_mask.sum(-1) / noise_mask.sum(-1).clamp(min=1)
    log_probs = model(
        z, attention_mask=attention_mask, noise_mask=noise_mask, timesteps=timesteps, output_exponents=False
    ).logits  # (B, L, V) SUBS log-probs
    nll = -log_probs.gather(-1, input_ids[..., None]).squeeze(-1)  # (B, L)
    return torch.where(z_is_mask, nll, torch.zeros_like(nll)).double()


def _cluster_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> tuple[float, float]:
    """Σ numerator / Σ denominator over rows and its delta-method standard error (rows as clusters)."""
    ratio = (numerator.sum() / denominator.sum()).item()
    rows = numerator.numel()
    if rows < 2:
        return ratio, math.nan
    residual = numerator - ratio * denominator
    return ratio, math.sqrt(rows / (rows - 1) * residual.square().sum().item()) / denominator.sum().item()


def _one_token_nll(model, targets, attention_mask, noise_mask, scored, batch_size) -> torch.Tensor:
    """`(B,)` sum over the scored positions of -log p_θ(x_i | x with only position i masked)."""
    row, position = scored.nonzero(as_tuple=True)  # one pass per scored token
    row_sum = torch.zeros(targets.shape[0], dtype=torch.float64)
    for start in range(0, row.numel(), batch_size):
        r, p = row[start : start + batch_size], position[start : start + batch_size]
        z_is_mask = torch.zeros((r.numel(), targets.shape[1]), dtype=torch.bool, device=targets.device)
        z_is_mask[torch.arange(r.numel(), device=targets.device), p] = True
        nll = _masked_nll(model, targets[r], attention_mask[r], noise_mask[r], z_is_mask).sum(-1)  # (n,)
        row_sum.index_add_(0, r.cpu(), nll.cpu())
    return row_sum


def _context_use_sums(model, rows, fractions, labels, positions_per_row, batch_size, generator, progress):
    """Per-row NLL sums and token counts `{label: (N,)}` for `context_use`, plus the "all" NLL summed over the
    tokens that "one" scored (the paired denominator of the ratio). Random draws per batch, in this order:
    the "one" positions `(B, L)`, then one `(B, L)` draw per float fraction in the order given."""
    device = next(model.parameters()).device
    collate = padding_collator(model)
    sums = {label: [] for label in labels}
    counts = {label: [] for label in labels}
    paired_all = []
    bar = logging.tqdm(total=len(rows), desc="context use", unit="row", disable=not progress)
    for start in range(0, len(rows), batch_size):
        batch = {key: value.to(device) for key, value in collate(rows[start : start + batch_size]).items()}
        targets, noise_mask = targets_and_noise_mask(
            batch["input_ids"], batch["attention_mask"], batch["labels"], model.config.mask_token_id
        )
        size = noise_mask.sum(-1)  # |M| per row: (B,)
        scored = _random_subset(noise_mask, size.clamp(max=positions_per_row), generator)  # "one" positions
        nll_all = None
        for fraction, label in zip(fractions, labels):
            if fraction == "one":
                row_sum = _one_token_nll(
                    model, targets, batch["attention_mask"], noise_mask, scored, batch_size
                )
                sums[label].append(row_sum)
                counts[label].append(scored.sum(-1).double().cpu())
                continue
            if fraction == "all":
                z_is_mask = noise_mask
            else:
                z_is_mask = _random_subset(
                    noise_mask, (fraction * size).round().long().clamp(min=1), generator
                )
            nll = _masked_nll(model, targets, batch["attention_mask"], noise_mask, z_is_mask)  # (B, L)
            nll_all = nll if fraction == "all" else nll_all
            sums[label].append(nll.sum(-1).cpu())
            counts[label].append(z_is_mask.sum(-1).double().cpu())
        if nll_all is not None:
            paired_all.append((nll_all * scored).sum(-1).cpu())
        bar.update(targets.shape[0])
    bar.close()
    sums = {label: torch.cat(values) for label, values in sums.items()}
    counts = {label: torch.cat(values) for label, values in counts.items()}
    return sums, counts, torch.cat(paired_all) if paired_all else None


@torch.no_grad()
def context_use(
    model,
    data: Iterable,
    *,
    fractions: Sequence[ContextFraction] = ("one", 0.15, 0.5, 0.85, "all"),
    tokenizer=None,
    max_sequences: int | None = 64,
    positions_per_row: int = 4,
    batch_size: int = 32,
    max_length: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> ContextUseResult:
    """Masked-token loss of the SUBS denoiser when one token / a fraction / all of each row is masked.

    A model that uses context predicts a token far better when only it is masked than when everything is:
    `ratio = loss("one") / loss("all")` well below 1. A model at unigram level has ratio ≈ 1, whatever its
    NELBO. For a fraction f, round(f·|M|) positions (at least one) of each row are masked uniformly at random
    and every masked token is scored; for "one", `positions_per_row` positions per row are scored, each in
    its own pass with only it masked; "all" masks every position of M. Positions outside M (padding,
    `labels == -100`) are never masked. Cost: about `max_sequences · (positions_per_row + len(fractions))`
    sequence passes.

    Args:
        model: a `LoMDMForMaskedDiffusion` (or PEFT wrapper).
        data: the forms `nelbo_perplexity` accepts (texts with `tokenizer`, token-id lists, dicts, a
            `datasets.Dataset`, a `(B, L)` tensor).
        fractions: which losses to measure: "one", "all" and floats in (0, 1).
        tokenizer: tokenizes texts.
        max_sequences: evaluate at most this many rows, evenly spaced through the data (None: all).
        positions_per_row: tokens scored per row for "one" (all of M when the row is shorter).
        batch_size: sequences per forward pass.
        max_length: refuse sequences longer than this (defaults to the model's max positions).
        generator: `torch.Generator` for the random positions (deterministic under it).
        progress: show a progress bar over the rows (transformers' `logging.disable_progress_bar` hides it).
    """
    labels = [_fraction_label(fraction) for fraction in fractions]
    if len(set(labels)) != len(labels):
        raise ValueError(f"`fractions` has duplicates: {list(fractions)}.")
    if positions_per_row < 1:
        raise ValueError(f"`positions_per_row` must be >= 1, got {positions_per_row}.")
    rows = as_rows(data, tokenizer, max_length or model.config.max_position_embeddings)
    if max_sequences is not None and len(rows) > max_sequences:
        rows = [rows[i * len(rows) // max_sequences] for i in range(max_sequences)]
    with eval_mode(model):
        sums, counts, paired_all = _context_use_sums(
            model, rows, fractions, labels, positions_per_row, batch_size, generator, progress
        )
    loss, stderr = {}, {}
    for label in labels:
        loss[label], stderr[label] = _cluster_ratio(sums[label], counts[label])
    ratio = ratio_stderr = None
    if "one" in labels and "all" in labels:
        ratio, ratio_stderr = _cluster_ratio(sums["one"], paired_all)
    return ContextUseResult(
        loss=loss,
        stderr=stderr,
        num_tokens={label: int(counts[label].sum()) for label in labels},
        ratio=ratio,
        ratio_stderr=ratio_stderr,
        num_sequences=len(rows),
    )
