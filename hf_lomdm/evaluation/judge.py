"""The judge: generative perplexity of samples under a causal LM, always with their unigram entropy.

`generative_perplexity` scores generated text with any causal LM judge and reports the per-sample unigram
entropy with it: low gen-PPL with low entropy means repetition, not quality. `load_judge` loads a judge by
name (`"smollm2"`: SmolLM2-135M offline, see `hf_lomdm.smollm2`).

Shapes: B = batch, L = length, V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..smollm2 import smollm2_gguf
from ..units import perplexity


def unigram_entropy(token_ids: Sequence[int]) -> float:
    """Entropy (nats) of the empirical unigram distribution of one sample's tokens."""
    if len(token_ids) == 0:
        return 0.0
    counts = torch.bincount(torch.as_tensor(token_ids, dtype=torch.long)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


@dataclass
class GenerativePerplexityResult:
    """gen-PPL under the judge and the unigram entropy of the samples, always reported together.

    Args:
        gen_ppl: exp(total judge NLL / total scored tokens).
        nll: judge NLL per scored token (nats).
        entropy: mean per-sample unigram entropy (nats) of the judge-tokenized samples.
        per_sample_entropy: the entropies, one per sample.
        num_tokens: tokens scored.
    """

    gen_ppl: float
    nll: float
    entropy: float
    per_sample_entropy: list[float]
    num_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def generative_perplexity(
    texts: Sequence[str] | None = None,
    *,
    judge,
    judge_tokenizer=None,
    token_ids: Sequence[Sequence[int]] | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
) -> GenerativePerplexityResult:
    """Generative perplexity of samples under a causal LM judge, with per-sample unigram entropy.

    Each sample is scored on its own (BOS prepended when the judge tokenizer has one; otherwise the first
    token is context only), right-padded in batches, in float32 log-softmax.

    Args:
        texts: generated texts (need `judge_tokenizer`), or
        token_ids: samples already in the judge's vocabulary.
        judge: any causal LM returning `.logits` of shape `(B, L, V)` (e.g. `LlamaForCausalLM`, SmolLM2).
        judge_tokenizer: tokenizer of the judge.
        batch_size: samples per judge pass.
        max_length: truncate samples to this many judge tokens (default: no truncation).
    """
    if (texts is None) == (token_ids is None):
        raise ValueError("pass exactly one of `texts` or `token_ids`.")
    bos = None
    if texts is not None:
        if judge_tokenizer is None:
            raise ValueError("`texts` need a `judge_tokenizer`.")
        bos = judge_tokenizer.bos_token_id
        token_ids = [judge_tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    samples = [list(ids)[:max_length] if max_length else list(ids) for ids in token_ids]
    if not samples or any(len(ids) == 0 for ids in samples):
        raise ValueError("every sample needs at least one token.")
    device = next(judge.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(samples), batch_size):
        chunk = [([bos] if bos is not None else []) + ids for ids in samples[start : start + batch_size]]
        length = max(len(ids) for ids in chunk)
        input_ids = torch.zeros((len(chunk), length), dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = judge(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (B, L, V)
        log_p = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        scored = attention_mask[:, 1:].bool()
        total_nll -= log_p[scored].sum().item()
        total_tokens += int(scored.sum())
    if total_tokens == 0:
        raise ValueError("no token was scored: samples of one token need a judge tokenizer with a BOS token.")
    entropies = [unigram_entropy(ids) for ids in samples]
    nll = total_nll / total_tokens
    return GenerativePerplexityResult(
        gen_ppl=perplexity(nll),
        nll=nll,
        entropy=sum(entropies) / len(entropies),
        per_sample_entropy=entropies,
        num_tokens=total_tokens,
    )


def load_smollm2_judge(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct as a judge LM, offline (see `hf_lomdm.smollm2`), loaded through transformers' GGUF
    support. Returns `(model, tokenizer)`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, gguf_file = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=dtype).eval()
    return model, tokenizer


def load_judge(name: str):
    """`(model, tokenizer)` of a judge LM for `generative_perplexity`: `"smollm2"` (`load_smollm2_judge`) or the
    path or Hub id of any causal LM."""
    if name == "smollm2":
        return load_smollm2_judge()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(name).eval(), AutoTokenizer.from_pretrained(name)


__all__ = [
    "GenerativePerplexityResult",
    "generative_perplexity",
    "load_judge",
    "load_smollm2_judge",
    "unigram_entropy",
]
