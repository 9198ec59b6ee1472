"""Units of likelihood results: a perplexity from nats per token.

Training (`hf_lomdm.trainer_logs.nelbo_metrics`) and evaluation (`hf_lomdm.evaluation`) both report a per-token
NELBO or NLL in nats together with its perplexity; this is the one conversion they share.
"""

from __future__ import annotations

import math

__all__ = ["perplexity"]


def perplexity(nats_per_token: float) -> float:
    """exp of a per-token NELBO or NLL in nats: a perplexity (bound); inf where exp overflows (~709.8)."""
    try:
        return math.exp(nats_per_token)
    except OverflowError:
        return math.inf
