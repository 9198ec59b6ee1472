"""The sampling harness: unconditional samples from a BOS prompt, and per-order samples scored side by side.

`unconditional_samples` is the one place that builds the BOS prompt, generates from it and decodes (the
`lomdm-train` report, the model card's reveal-order plot and `sample_orders` use it). `sample_orders` draws
samples for each generation order at the same steps and seed and scores them with the judge
(`hf_lomdm.evaluation.judge`), or without one by the unigram entropy of their own tokens.

Shapes: N = samples, L = length.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..generation_lomdm import LoMDMGenerateOutput
from .common import eval_mode
from .judge import generative_perplexity, unigram_entropy

__all__ = ["OrderSamples", "bos_prompt", "sample_orders", "unconditional_samples"]


def bos_prompt(tokenizer, num_samples: int, device: torch.device | str | None = None) -> torch.LongTensor:
    """`(N, 1)` BOS ids: the prompt of unconditional samples (training rows start with BOS)."""
    return torch.full((num_samples, 1), tokenizer.bos_token_id, dtype=torch.long, device=device)


@torch.no_grad()
def unconditional_samples(
    model, tokenizer, num_samples: int, *, seed: int = 0, **generate_kwargs: Any
) -> tuple[LoMDMGenerateOutput, list[str]]:
    """Generate `num_samples` samples from a BOS prompt in eval mode (the model's mode is restored after) and
    decode them without special tokens.

    Args:
        model: a `LoMDMForMaskedDiffusion`.
        tokenizer: its tokenizer (BOS prompt, decoding).
        num_samples: samples to draw.
        seed: seed of the sampling generator (on the model's device).
        generate_kwargs: `model.generate` arguments (length, `steps`, `order`, ...).

    Returns `(output, texts)`: the `LoMDMGenerateOutput` and the decoded samples.
    """
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with eval_mode(model):
        out = model.generate(
            bos_prompt(tokenizer, num_samples, model.device),
            return_dict_in_generate=True,
            generator=generator,
            **generate_kwargs,
        )
    return out, tokenizer.batch_decode(out.sequences, skip_special_tokens=True)


@dataclass
class OrderSamples:
    """Unconditional samples of one generation order, decoded and scored.

    Args:
        texts: the samples, decoded without special tokens.
        entropy: mean per-sample unigram entropy (nats) of the judge-tokenized samples, or without a judge of the
            samples' own tokens (prompt and special tokens dropped).
        gen_ppl: gen-PPL under the judge (None without one).
        nfe: mean denoiser passes per sample.
    """

    texts: list[str]
    entropy: float
    gen_ppl: float | None
    nfe: float


def sample_orders(
    model,
    tokenizer,
    orders: Sequence[str],
    *,
    num_samples: int,
    steps: int | None,
    max_length: int,
    judge=None,
    judge_tokenizer=None,
    seed: int = 0,
) -> dict[str, OrderSamples]:
    """Generate per order, decode, score: unconditional samples (`unconditional_samples`, filled to
    `max_length`) for each order at the same `steps` and seed, scored by `generative_perplexity` under `judge`
    (an empty sample is scored as ".") or, without a judge, by the unigram entropy of its own tokens.

    Args:
        model: a `LoMDMForMaskedDiffusion`.
        tokenizer: its tokenizer (BOS prompt, decoding).
        orders: `LoMDMGenerationConfig.order` values.
        num_samples: samples per order.
        steps: sampler steps (None: the exact first-hitting sampler).
        max_length: length of each sample, prompt included.
        judge, judge_tokenizer: a causal LM and its tokenizer (`load_judge`), or None.
        seed: seed of every order's sampling generator.
    """
    special = set(tokenizer.all_special_ids)
    results = {}
    for order in orders:
        out, texts = unconditional_samples(
            model, tokenizer, num_samples, seed=seed, max_length=max_length, steps=steps, order=order
        )
        nfe = float(out.nfe.float().mean())
        if judge is None:  # entropy of the model's own tokens (characters for a character tokenizer)
            own = [[t for t in row if t not in special] for row in out.sequences[:, 1:].tolist()]
            entropy = statistics.fmean(unigram_entropy(ids) for ids in own)
            results[order] = OrderSamples(texts=texts, entropy=entropy, gen_ppl=None, nfe=nfe)
            continue
        scores = generative_perplexity(
            [text if text.strip() else "." for text in texts], judge=judge, judge_tokenizer=judge_tokenizer
        )
        results[order] = OrderSamples(texts=texts, entropy=scores.entropy, gen_ppl=scores.gen_ppl, nfe=nfe)
    return results
