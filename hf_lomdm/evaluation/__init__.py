"""Honest evaluation of masked diffusion LMs, one module per job.

- `likelihood`: the per-token NELBO and its PPL bound (`nelbo_perplexity`, `sequence_nelbo_samples`).
- `context`: whether the denoiser uses context (`context_use`: loss with one token vs everything masked).
- `judge`: generative perplexity under a causal LM judge, with the samples' unigram entropy
  (`generative_perplexity`, `load_judge`).
- `harness`: unconditional samples from a BOS prompt and per-order sampling scored side by side
  (`unconditional_samples`, `sample_orders`).
- `common`: what they share (the data forms accepted, padding, `eval_mode`).

Every public name is importable from `hf_lomdm.evaluation` directly.
"""

from ..smollm2 import smollm2_gguf
from ..units import perplexity
from .common import eval_mode
from .context import ContextUseResult, context_use
from .harness import OrderSamples, bos_prompt, sample_orders, unconditional_samples
from .judge import (
    GenerativePerplexityResult,
    generative_perplexity,
    load_judge,
    load_smollm2_judge,
    unigram_entropy,
)
from .likelihood import NelboResult, nelbo_perplexity, sequence_nelbo_samples

__all__ = [
    "ContextUseResult",
    "GenerativePerplexityResult",
    "NelboResult",
    "OrderSamples",
    "bos_prompt",
    "context_use",
    "eval_mode",
    "generative_perplexity",
    "load_judge",
    "load_smollm2_judge",
    "nelbo_perplexity",
    "perplexity",
    "sample_orders",
    "sequence_nelbo_samples",
    "smollm2_gguf",
    "unconditional_samples",
    "unigram_entropy",
]
