"""The likelihood bound: per-token NELBO and its PPL bound `exp(NELBO)` on a data set.

`nelbo_perplexity` reports the per-token NELBO (L_velocity included) estimated with `time_samples`
importance-sampled, stratified times per sequence (an upper bound on the model's perplexity in expectation).
Optionally it reports MDLM's ε-truncated estimate beside it, which is *not a bound*, so the gap is
visible. `sequence_nelbo_samples` gives the per-sequence samples (the lm-eval adapter scores with them).

Shapes: B = batch, L = length, K = time samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from transformers.utils import logging

from ..objective import TIME_UNIFORM_WEIGHT, TimeSampling, stratified_nelbo
from ..units import perplexity
from .common import as_rows, eval_mode, padding_collator

__all__ = ["NelboResult", "nelbo_perplexity", "sequence_nelbo_samples"]


@dataclass
class NelboResult:
    """Per-token NELBO over a data set.

    Args:
        nelbo: per-token NELBO in nats (sum of NELBO over sequences / number of noisable tokens).
        ppl_bound: exp(nelbo), an upper bound on perplexity (in expectation over the time samples).
        stderr: Monte-Carlo standard error of `nelbo` (conservative: stratified samples treated as iid).
        num_tokens: number of tokens counted (|M| summed over sequences).
        num_sequences: sequences evaluated.
        time_samples: time samples per sequence.
        nelbo_uniform_eps, ppl_uniform_eps: MDLM's ε-truncated estimate (NOT a bound), if requested.
    """

    nelbo: float
    ppl_bound: float
    stderr: float
    num_tokens: int
    num_sequences: int
    time_samples: int
    nelbo_uniform_eps: float | None = None
    ppl_uniform_eps: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def sequence_nelbo_samples(
    model,
    rows,
    *,
    time_samples: int,
    batch_size: int,
    time_sampling: TimeSampling = "importance",
    uniform_weight: float = TIME_UNIFORM_WEIGHT,
    generator: torch.Generator | None = None,
    allowed_tokens: torch.Tensor | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float64 NELBO samples and (N,) token counts of `rows`, K = `time_samples` stratified times per
    sequence (`hf_lomdm.objective.stratified_nelbo`), `batch_size // K` sequences per forward pass.
    `allowed_tokens` (bool `(L, V)`) is cut to each right-padded batch's length; `progress` shows a bar (rows)."""
    device = next(model.parameters()).device
    if allowed_tokens is not None:
        allowed_tokens = allowed_tokens.to(device)  # once, not per batch
    collate = padding_collator(model)
    per_batch = max(1, batch_size // time_samples)
    samples, tokens = [], []
    bar = logging.tqdm(total=len(rows), desc=f"NELBO ({time_sampling})", unit="row", disable=not progress)
    for start in range(0, len(rows), per_batch):
        batch = {key: value.to(device) for key, value in collate(rows[start : start + per_batch]).items()}
        result = stratified_nelbo(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            time_samples=time_samples,
            time_sampling=time_sampling,
            uniform_weight=uniform_weight,
            generator=generator,
            allowed_tokens=None if allowed_tokens is None else allowed_tokens[: batch["input_ids"].shape[1]],
        )
        samples.append(result.nelbo.double().cpu().T)  # (n, K)
        tokens.append(result.num_tokens.cpu())
        bar.update(batch["input_ids"].shape[0])
    bar.close()
    return torch.cat(samples), torch.cat(tokens)


def nelbo_perplexity(
    model,
    data: Iterable,
    *,
    tokenizer=None,
    time_samples: int = 8,
    batch_size: int = 32,
    max_length: int | None = None,
    uniform_weight: float = TIME_UNIFORM_WEIGHT,
    include_uniform_eps: bool = False,
    generator: torch.Generator | None = None,
    allowed_tokens: torch.Tensor | None = None,
    progress: bool = False,
) -> NelboResult:
    """Per-token NELBO and PPL bound of `model` on `data` (L_velocity included).

    Args:
        model: a `LoMDMForMaskedDiffusion` (or PEFT wrapper).
        data: texts (with `tokenizer`), token-id lists, dicts with `input_ids` (+ optional `attention_mask`,
            `labels` with -100 on positions that are context only), a `datasets.Dataset` of such rows, or a
            `(B, L)` tensor. Packed or per-document rows both work; nothing is truncated.
        tokenizer: tokenizes texts (special tokens added as the tokenizer defines).
        time_samples: K importance-sampled, stratified times per sequence.
        batch_size: rows per forward pass (sequences x time samples).
        max_length: refuse sequences longer than this (defaults to the model's max positions).
        uniform_weight: weight of the uniform part of the time-sampling mixture.
        include_uniform_eps: also report MDLM's ε-truncated estimate (labelled: not a bound).
        generator: `torch.Generator` for reproducible estimates.
        allowed_tokens: bool `(L, V)`, the tokens each position may take (see `lomdm_loss`), e.g.
            `TabularTokenizer.allowed_tokens()`.
        progress: show a progress bar over the rows (transformers' `logging.disable_progress_bar` hides it).
    """
    if time_samples < 1:
        raise ValueError(f"`time_samples` must be >= 1, got {time_samples}.")
    rows = as_rows(data, tokenizer, max_length or model.config.max_position_embeddings)
    kwargs = {
        "time_samples": time_samples,
        "batch_size": batch_size,
        "uniform_weight": uniform_weight,
        "generator": generator,
        "allowed_tokens": allowed_tokens,
        "progress": progress,
    }
    with eval_mode(model):
        samples, tokens = sequence_nelbo_samples(model, rows, time_sampling="importance", **kwargs)
        eps_nelbo = None
        if include_uniform_eps:
            eps_samples, _ = sequence_nelbo_samples(model, rows, time_sampling="uniform_eps", **kwargs)
            eps_nelbo = eps_samples.mean(1).sum().item() / tokens.sum().item()

    total_tokens = tokens.sum().item()
    nelbo = samples.mean(1).sum().item() / total_tokens
    # Var(sum_i mean_k N_ik) = sum_i s_i^2 / K; needs K >= 2 per sequence.
    stderr = math.nan
    if time_samples > 1:
        stderr = math.sqrt((samples.var(1) / time_samples).sum().item()) / total_tokens
    return NelboResult(
        nelbo=nelbo,
        ppl_bound=perplexity(nelbo),
        stderr=stderr,
        num_tokens=int(total_tokens),
        num_sequences=len(rows),
        time_samples=time_samples,
        nelbo_uniform_eps=eps_nelbo,
        ppl_uniform_eps=None if eps_nelbo is None else perplexity(eps_nelbo),
    )
