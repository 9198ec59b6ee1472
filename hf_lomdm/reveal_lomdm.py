"""Reveal rules of the LoMDM sampler: which masked positions one step reveals, for each `order`.

Hub-facing: this file ships inside checkpoints (trust_remote_code), so it imports only torch, transformers and
its `*_lomdm.py` siblings, through single-dot imports (`from .x import y`): transformers copies exactly those
into a saved folder. It imports neither the generation config nor the sampler; both import it.

Shapes: B = batch, L = canvas length, V = vocabulary, K = number of positions sampled in one step.

`REVEAL_RULES` is the one place where an `order` name means something: `LoMDMGenerationConfig` accepts exactly
its keys and checks the settings only some orders take (`REVEAL_OPTIONS`: `eps`, `threshold`, `order_temperature`,
`order_weight`) with `check_reveal_options`; `LoMDMSampler` builds its rule with `build_reveal_rule`.

- `learned`, `steps=S` ([`LearnedReveal`]): the τ-grid 1 = t_0 > ... > t_S = 0 (LoMDM §4, reverse process);
  every masked position is revealed with probability `schedule_lomdm.unmask_prob(log s, log t, ê)`.
- `learned`, `steps=None`: the exact first-hitting sampler. z is fixed between reveals, so each masked
  position's next reveal time is `schedule_lomdm.reveal_log_time(log t, u, ê)`; the latest is revealed and t
  moves there. This simulates the continuous-time reverse process exactly, one pass per token.
- `random` ([`RandomReveal`]): the same with ê ≡ 1 (MDLM ancestral sampling).
- `confidence` / `margin` / `entropy` / `left_to_right` ([`RankedReveal`]): per-row reveal quotas filled by
  score (MaskGIT / Dream style); with `threshold` ([`ThresholdReveal`]), confidence decoding also reveals
  every token whose probability reaches it (parallel decoding).
- `learned_ranked` ([`LearnedRankedReveal`]): the same quotas filled in the learned order, ranked by ê (its most
  likely order with `order_temperature=0`, a draw from the learned order distribution with 1).
- `confidence_learned` / `margin_learned` ([`MixedReveal`]): the same quotas filled by the denoiser's score plus
  `order_weight` times the row's standardised log ê: the denoiser's state and the learned order rank together.

A rule reads a [`RevealContext`] (what the sampler knows at this step) and returns a [`Reveal`] (the positions,
their tokens and, for the first-hitting sampler, the rows' new time); it never writes the sampler's state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .schedule_lomdm import reveal_log_time, unmask_prob

# `sample(positions, u)`: tokens `(K,)` and float64 probabilities `(K, V)` at the K `positions` `(B, L)`
# (row-major), drawn with the uniforms `u` `(B, L)` from the processed log p_θ (see `LoMDMSampler`).
SampleFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class RevealContext:
    """What a reveal rule reads at one sampler step; the sampler builds it from its state.

    Args:
        masked (`torch.BoolTensor` of shape `(B, L)`): Positions of the current block still masked.
        log_t (`torch.Tensor` of shape `(B,)`): float64 log time of each row (first-hitting sampler).
        step_index (`int`): Steps taken in the current block.
        num_steps (`int`, *optional*): Steps of the block; `None`: the first-hitting sampler / one token a step.
        block_total (`torch.LongTensor` of shape `(B,)`): Masked positions of the block when it began.
        reverse_exponents (`torch.Tensor` of shape `(B, L)`, *optional*): ê of each row's last pass.
    """

    masked: torch.BoolTensor
    log_t: torch.Tensor
    step_index: int
    num_steps: int | None
    block_total: torch.LongTensor
    reverse_exponents: torch.Tensor | None = None


@dataclass(frozen=True)
class Reveal:
    """What one step reveals.

    Args:
        positions (`torch.BoolTensor` of shape `(B, L)`): The positions revealed (a subset of the masked ones).
        tokens (`torch.LongTensor` of shape `(K,)`): Their tokens, row-major.
        log_t (`torch.Tensor` of shape `(B,)`, *optional*): The rows' log time after the step (first-hitting
            sampler); `None` leaves it unchanged.
    """

    positions: torch.BoolTensor
    tokens: torch.LongTensor
    log_t: torch.Tensor | None = None


# -- the settings only some rules take -----------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_eps(value: Any) -> None:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"`eps` must be in [0, 1), got {value!r}.")


def _check_threshold(value: Any) -> None:
    if not _is_number(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"`threshold` must be in (0, 1], got {value!r}.")


def _check_order_temperature(value: Any) -> None:
    if not _is_number(value) or not 0.0 <= value <= math.inf:
        raise ValueError(f"`order_temperature` must be a number in [0, inf], got {value!r}.")


def _check_order_weight(value: Any) -> None:
    if not _is_number(value) or not 0.0 <= value <= math.inf:
        raise ValueError(f"`order_weight` must be a number in [0, inf], got {value!r}.")


@dataclass(frozen=True)
class RevealOption:
    """A generation setting that only the rules listing it in `options` take.

    Args:
        default (`Any`): The value that leaves it off; any other value needs a rule that takes it.
        check (`Callable[[Any], None]`): Raises a `ValueError` naming a bad value.
    """

    default: Any
    check: Callable[[Any], None]


REVEAL_OPTIONS: dict[str, RevealOption] = {
    "eps": RevealOption(0.0, _check_eps),
    "threshold": RevealOption(None, _check_threshold),
    "order_temperature": RevealOption(None, _check_order_temperature),
    "order_weight": RevealOption(None, _check_order_weight),
}


# -- reveal rules --------------------------------------------------------------------------------------------


class RevealRule:
    """How one sampler step picks the positions to reveal and their tokens; one subclass per `order`.

    Built once per call by `build_reveal_rule`, so no other code branches on the order name.
    """

    needs_exponents: ClassVar[bool] = False  # reads ê(z): the backbone must return `reverse_exponents`
    options: ClassVar[
        tuple[str, ...]
    ] = ()  # the `REVEAL_OPTIONS` it takes, as keyword arguments of `from_options`

    @classmethod
    def from_options(cls, **options: Any) -> RevealRule:
        """The rule with the settings `options` (the names in `cls.options`)."""
        return cls(**options)

    def timesteps(self, context: RevealContext) -> torch.Tensor:
        """`(B,)` time t of the next pass, for time-conditioned backbones."""
        raise NotImplementedError

    def reveal(self, context: RevealContext, u: torch.Tensor, sample: SampleFn) -> Reveal:
        """The positions to reveal and their tokens.

        Args:
            context ([`RevealContext`]): What the sampler knows at this step.
            u (`torch.Tensor` of shape `(B, L, 2)`): float64 uniforms in (0, 1]: reveal decision, token draw.
            sample (`SampleFn`): Draws the tokens at given positions from the processed log p_θ.
        """
        raise NotImplementedError


class ScheduleReveal(RevealRule):
    """Reveal by the reverse schedule with exponents ê: on the τ-grid, a masked position is revealed
    at step t_k -> t_{k+1} with probability `unmask_prob`; with `steps=None`, the exact first-hitting sampler.

    Args:
        eps (`float`, defaults to 0.0): MDLM's time truncation: once t would fall below `eps`, every remaining
            position is revealed at once.
    """

    options = ("eps",)

    def __init__(self, eps: float = 0.0):
        self.eps = eps

    def exponents(self, context: RevealContext) -> torch.Tensor:
        """`(B, L)` reverse exponents ê of the rows' last passes."""
        raise NotImplementedError

    def timesteps(self, context: RevealContext) -> torch.Tensor:
        if context.num_steps is None:
            return context.log_t.exp()
        return torch.full_like(context.log_t, math.exp(self._grid_log_time(context, context.step_index)))

    def reveal(self, context: RevealContext, u: torch.Tensor, sample: SampleFn) -> Reveal:
        e_hat = self.exponents(context)  # (B, L)
        if context.num_steps is None:
            positions, log_t = self._first_hitting(context, u[..., 0], e_hat)
        else:
            positions, log_t = self._grid_step(context, u[..., 0], e_hat), None
        return Reveal(positions, sample(positions, u[..., 1])[0], log_t)

    def _first_hitting(
        self, context: RevealContext, u: torch.Tensor, e_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reveal each row's masked position with the latest reveal time; returns it and the rows' new log t."""
        masked = context.masked
        log_reveal = reveal_log_time(context.log_t[:, None], u, e_hat).masked_fill(
            ~masked, -math.inf
        )  # (B, L)
        log_next, first = log_reveal.max(-1)  # (B,): the latest reveal time is the next event
        positions = torch.zeros_like(masked).scatter_(-1, first[:, None], True) & masked
        if self.eps > 0:
            positions |= masked & (log_next < math.log(self.eps))[:, None]
        return positions, torch.where(masked.any(-1), log_next, context.log_t)

    def _grid_step(self, context: RevealContext, u: torch.Tensor, e_hat: torch.Tensor) -> torch.Tensor:
        """The τ-grid step t_k -> t_{k+1}: reveal with probability `unmask_prob(log t_{k+1}, log t_k, ê)`."""
        k = context.step_index
        log_t = torch.tensor(self._grid_log_time(context, k), dtype=torch.float64, device=u.device)
        log_s = torch.tensor(self._grid_log_time(context, k + 1), dtype=torch.float64, device=u.device)
        return context.masked & (u < unmask_prob(log_s, log_t, e_hat))

    def _grid_log_time(self, context: RevealContext, k: int) -> float:
        """log t_k of the τ-grid: t_k = 1 - (1 - eps) k / S for k < S, and t_S = 0."""
        num_steps = context.num_steps
        assert 0 <= k <= num_steps, f"step {k} outside the grid of {num_steps} steps"
        return -math.inf if k == num_steps else math.log1p(-(1.0 - self.eps) * k / num_steps)


class LearnedReveal(ScheduleReveal):
    """`order="learned"`: the model's reverse schedule ê(z) (LoMDM §4)."""

    needs_exponents = True

    def exponents(self, context: RevealContext) -> torch.Tensor:
        return context.reverse_exponents


class RandomReveal(ScheduleReveal):
    """`order="random"`: ê ≡ 1, MDLM ancestral sampling (every masked position equally likely next)."""

    def exponents(self, context: RevealContext) -> torch.Tensor:
        return torch.ones(context.masked.shape, dtype=torch.float64, device=context.masked.device)


class RankedReveal(RevealRule):
    """Fill each row's reveal quota with its best-scored masked positions (MaskGIT / Dream style).

    The quota spreads the block's tokens evenly over its steps (one token per step with `steps=None`). Every
    masked position is sampled, then scored by `score`; the chosen ones keep their sampled tokens.
    """

    def timesteps(self, context: RevealContext) -> torch.Tensor:
        # Ranked orders have no schedule: t is the fraction of the block still masked.
        return context.masked.sum(-1) / context.block_total.clamp(min=1)

    def score(self, tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """`(K,)` scores of the sampled `tokens` `(K,)` under `probs` `(K, V)`; higher is revealed first."""
        raise NotImplementedError

    def reveal(self, context: RevealContext, u: torch.Tensor, sample: SampleFn) -> Reveal:
        masked = context.masked
        tokens, probs = sample(masked, u[..., 1])  # (K,), (K, V): every masked position is a candidate
        scores = torch.full(masked.shape, -math.inf, dtype=torch.float64, device=masked.device)
        scores[masked] = self.score(tokens, probs)  # (B, L); boolean indexing follows the row-major order
        chosen = self.choose(context, scores, masked)
        placed = torch.zeros(masked.shape, dtype=tokens.dtype, device=masked.device)  # read only at chosen
        placed[masked] = tokens
        return Reveal(chosen, placed[chosen])

    def quota(self, context: RevealContext) -> torch.Tensor:
        """`(B,)` tokens to reveal this step: floor((k+1) n / S) - floor(k n / S) of the block's n."""
        if context.num_steps is None:
            return torch.ones_like(context.block_total)
        k, n, num_steps = context.step_index, context.block_total, context.num_steps
        return (k + 1) * n // num_steps - k * n // num_steps

    def choose(self, context: RevealContext, scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """The `quota` best-scored eligible positions of each row (ties go to the leftmost)."""
        quota = self.quota(context)  # (B,)
        ranking = scores.masked_fill(~eligible, -math.inf).argsort(dim=-1, descending=True, stable=True)
        positions = torch.arange(scores.shape[1], device=scores.device).expand_as(ranking)
        ranks = torch.empty_like(ranking).scatter_(-1, ranking, positions)  # (B, L) rank of each position
        return eligible & (ranks < quota[:, None])


class ConfidenceReveal(RankedReveal):
    """`order="confidence"`: the probability of the sampled token (MaskGIT; Dream's `maskgit_plus`)."""

    options = ("threshold",)

    @classmethod
    def from_options(cls, threshold: float | None = None) -> ConfidenceReveal:
        return ConfidenceReveal() if threshold is None else ThresholdReveal(threshold)

    def score(self, tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return probs.gather(-1, tokens[:, None]).squeeze(-1)


class ThresholdReveal(ConfidenceReveal):
    """`order="confidence"` with `threshold`: parallel decoding. Besides the quota (at least one token per row
    per step), every masked position whose sampled token has probability ≥ `threshold` is revealed.

    Args:
        threshold (`float`): Confidence in (0, 1] above which a token is revealed at once.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold

    def quota(self, context: RevealContext) -> torch.Tensor:
        return super().quota(context).clamp(min=1)

    def choose(self, context: RevealContext, scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        return super().choose(context, scores, eligible) | (eligible & (scores >= self.threshold))


class MarginReveal(RankedReveal):
    """`order="margin"`: top-1 minus top-2 probability (Dream's `topk_margin`)."""

    def score(self, tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        top2 = probs.topk(2, dim=-1).values  # (K, 2)
        return top2[:, 0] - top2[:, 1]


class EntropyReveal(RankedReveal):
    """`order="entropy"`: lowest entropy first."""

    def score(self, tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return torch.special.xlogy(probs, probs).sum(-1)  # sum p log p = -H: the most certain scores highest


class LeftToRightReveal(RankedReveal):
    """`order="left_to_right"`: the leftmost masked positions first. The rank needs no token, so only the
    chosen positions are sampled."""

    def reveal(self, context: RevealContext, u: torch.Tensor, sample: SampleFn) -> Reveal:
        masked = context.masked
        columns = torch.arange(masked.shape[1], device=masked.device, dtype=torch.float64)
        chosen = self.choose(context, -columns.expand(masked.shape), masked)
        return Reveal(chosen, sample(chosen, u[..., 1])[0])


class LearnedRankedReveal(RankedReveal):
    """`order="learned_ranked"`: fill each row's quota in the order the learned schedule ranks the positions.

    Under exponents ê a token's reveal time is t* = u^{1/ê}, so -log t* ~ Exponential(ê) and the order of the
    reveals is a Plackett-Luce draw with weights ê: P(i next) = ê_i / Σ_j ê_j over the masked positions (arXiv
    2511.19152, Prop. 3.1). Gumbel top-k samples exactly that: rank by log ê + g, g ~ Gumbel(0, 1). With
    `order_temperature` τ the rank is log ê + τ·g, i.e. Plackett-Luce weights ê^{1/τ}: τ = 1 keeps the learned order
    distribution (with a fixed number of reveals per step instead of the schedule's random one), τ = 0 takes its
    most likely order, highest ê first, ties broken uniformly at random, and τ = inf ignores ê: a uniformly random
    order with the same per-step quotas (the baseline to compare a learned ranking with). A sharper order matters
    because the exponents learned in a few hundred steps are close (ê = 0.8 vs 0.6 puts the first one first with
    probability 0.57 only).

    Args:
        temperature (`float`, defaults to 0.0): τ in [0, inf].
    """

    needs_exponents = True
    options = ("order_temperature",)

    def __init__(self, temperature: float = 0.0):
        self.temperature = temperature

    @classmethod
    def from_options(cls, order_temperature: float | None = None) -> LearnedRankedReveal:
        return cls(0.0 if order_temperature is None else order_temperature)

    def reveal(self, context: RevealContext, u: torch.Tensor, sample: SampleFn) -> Reveal:
        masked = context.masked
        gumbel = -torch.log(-torch.log(u[..., 0].clamp(max=1.0 - 1e-12)))  # (B, L) float64
        log_e = context.reverse_exponents.double().log()  # (B, L)
        if self.temperature == math.inf:
            chosen = self.choose(context, gumbel, masked)
        elif self.temperature > 0:
            chosen = self.choose(context, log_e + self.temperature * gumbel, masked)
        else:  # highest ê first; among equal ê the Gumbel rank (uniformly random), not the leftmost position
            by_gumbel = gumbel.argsort(dim=-1, descending=True)
            ranked = self.choose(context, log_e.gather(-1, by_gumbel), masked.gather(-1, by_gumbel))
            chosen = torch.zeros_like(masked).scatter_(-1, by_gumbel, ranked)
        return Reveal(chosen, sample(chosen, u[..., 1])[0])


class MixedReveal(RankedReveal):
    """Fill each row's quota by the denoiser's score and the learned order together (`confidence_learned`,
    `margin_learned`).

    A masked position i scores s_i + λ·z_i: s_i is the heuristic's score (`confidence`: the probability of the
    sampled token; `margin`: top-1 minus top-2 probability), z_i = (log ê_i - mean) / sd its reverse exponent
    standardised over the row's masked positions (z ≡ 0 where they all share one ê), and λ = `order_weight`, in
    units of s per standard deviation of log ê. λ = 0 is the heuristic's order (ties to the leftmost), λ = inf
    ranks by ê with s breaking ties: `learned_ranked` at `order_temperature=0` wherever ê has no ties. Only the
    model's outputs are read, so it is an honest sampler.

    Args:
        weight (`float`, defaults to 1.0): λ in [0, inf].
    """

    needs_exponents = True
    options = ("order_weight",)
    heuristic: ClassVar[RankedReveal]

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    @classmethod
    def from_options(cls, order_weight: float | None = None) -> MixedReveal:
        return cls(1.0 if order_weight is None else order_weight)

    def reveal(self, context: RevealContext, u: torch.Tensor, sample: SampleFn) -> Reveal:
        masked = context.masked
        tokens, probs = sample(masked, u[..., 1])  # (K,), (K, V): every masked position is a candidate
        scores = torch.full(masked.shape, -math.inf, dtype=torch.float64, device=masked.device)
        scores[masked] = self.heuristic.score(tokens, probs)  # (B, L)
        standard = self.standardised_log_exponents(context)  # (B, L)
        if self.weight == math.inf:  # by ê, the heuristic breaks ties: rank by ê along the heuristic's order
            by_score = scores.argsort(dim=-1, descending=True, stable=True)
            ranked = self.choose(context, standard.gather(-1, by_score), masked.gather(-1, by_score))
            chosen = torch.zeros_like(masked).scatter_(-1, by_score, ranked)
        else:
            chosen = self.choose(context, scores + self.weight * standard, masked)
        placed = torch.zeros(masked.shape, dtype=tokens.dtype, device=masked.device)  # read only at chosen
        placed[masked] = tokens
        return Reveal(chosen, placed[chosen])

    @staticmethod
    def standardised_log_exponents(context: RevealContext) -> torch.Tensor:
        """`(B, L)` float64 z: log ê standardised over each row's masked positions (0 elsewhere, and where the
        row's masked positions share one ê)."""
        masked = context.masked
        log_e = context.reverse_exponents.double().log().masked_fill(~masked, 0.0)
        count = masked.sum(-1, keepdim=True).clamp(min=1)
        centred = (log_e - log_e.sum(-1, keepdim=True) / count).masked_fill(~masked, 0.0)
        sd = (centred.square().sum(-1, keepdim=True) / count).sqrt()
        return torch.where(sd > 0, centred / sd.clamp(min=1e-300), 0.0)


class ConfidenceLearnedReveal(MixedReveal):
    """`order="confidence_learned"`: the probability of the sampled token plus λ·z (see [`MixedReveal`])."""

    heuristic = ConfidenceReveal()


class MarginLearnedReveal(MixedReveal):
    """`order="margin_learned"`: top-1 minus top-2 probability plus λ·z (see [`MixedReveal`])."""

    heuristic = MarginReveal()


# The one place where an `order` name means something; `LoMDMGenerationConfig` accepts exactly these keys.
REVEAL_RULES: dict[str, type[RevealRule]] = {
    "learned": LearnedReveal,
    "random": RandomReveal,
    "confidence": ConfidenceReveal,
    "margin": MarginReveal,
    "entropy": EntropyReveal,
    "left_to_right": LeftToRightReveal,
    "learned_ranked": LearnedRankedReveal,
    "confidence_learned": ConfidenceLearnedReveal,
    "margin_learned": MarginLearnedReveal,
}


def check_reveal_options(order: str, settings: Mapping[str, Any]) -> None:
    """Raise a `ValueError` for an unknown `order`, a bad value of a `REVEAL_OPTIONS` setting, or one set (to
    anything but its default) that the rule of `order` does not take. `settings`: name -> value."""
    if order not in REVEAL_RULES:
        raise ValueError(f"`order` must be one of {tuple(REVEAL_RULES)}, got {order!r}.")
    for name, option in REVEAL_OPTIONS.items():
        value = settings.get(name, option.default)
        if value is None and option.default is None:  # off
            continue
        option.check(value)
        if value != option.default and name not in REVEAL_RULES[order].options:
            taking = " or ".join(repr(o) for o, rule in REVEAL_RULES.items() if name in rule.options)
            raise ValueError(f"`{name}` is a setting of order={taking}; got order={order!r}.")


def build_reveal_rule(order: str, settings: Mapping[str, Any]) -> RevealRule:
    """The rule of `order` with the `REVEAL_OPTIONS` it takes from `settings` (name -> value)."""
    rule = REVEAL_RULES[order]
    return rule.from_options(**{name: settings[name] for name in rule.options if name in settings})


__all__ = [
    "REVEAL_OPTIONS",
    "REVEAL_RULES",
    "ConfidenceLearnedReveal",
    "ConfidenceReveal",
    "EntropyReveal",
    "LearnedRankedReveal",
    "LearnedReveal",
    "LeftToRightReveal",
    "MarginLearnedReveal",
    "MarginReveal",
    "MixedReveal",
    "RandomReveal",
    "RankedReveal",
    "Reveal",
    "RevealContext",
    "RevealOption",
    "RevealRule",
    "SampleFn",
    "ScheduleReveal",
    "ThresholdReveal",
    "build_reveal_rule",
    "check_reveal_options",
]
