"""Units of likelihood results: a perplexity from nats per token, and bits per character.

Training (`hf_lomdm.trainer_logs.nelbo_metrics`) and evaluation (`hf_lomdm.evaluation`) both report a per-token
NELBO or NLL in nats together with its perplexity; these are the conversions they share. With a
character-level tokenizer (`is_character_level`) a token is a character, so nats/token / ln 2 is bits/character.
"""

from __future__ import annotations

import math

__all__ = ["bits", "is_character_level", "perplexity"]


def perplexity(nats_per_token: float) -> float:
    """exp of a per-token NELBO or NLL in nats: a perplexity (bound); inf where exp overflows (~709.8)."""
    try:
        return math.exp(nats_per_token)
    except OverflowError:
        return math.inf


def bits(nats: float) -> float:
    """A value in nats in bits (divided by ln 2)."""
    return nats / math.log(2)


def is_character_level(tokenizer) -> bool:
    """Whether every non-special token of `tokenizer` is one character (e.g. `hf_lomdm.data.train_char_tokenizer`),
    so that per-token results are per-character results."""
    special = set(tokenizer.all_special_tokens)
    tokens = [token for token in tokenizer.get_vocab() if token not in special]
    return bool(tokens) and all(len(token) == 1 for token in tokens)
