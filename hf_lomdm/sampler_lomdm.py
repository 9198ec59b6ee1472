"""The LoMDM sampler: the reverse process of SPEC §2 on a fixed canvas, and the reveal rule of each `order`.

Shapes: B = batch, L = canvas length (left-padded prompt + new tokens), V = vocabulary, K = number of positions
sampled in one step.

The canvas z holds the prompt, the mask tokens appended to it and any mask token already in the input
(infilling). The positions to fill are the set M of SPEC §1 (`noise_mask`), fixed for the whole call. After a
backbone pass on z (log p_θ(· | z), SUBS log-probabilities, and the reverse exponents ê(z)), `LoMDMSampler.step`
reveals masked positions by the reveal rule that `order` names in `REVEAL_RULES`, looked up once:

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

Revealed and prompt tokens never change. The sampler never calls the model: `generate` runs the backbone and
hands its output to `step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from .schedule_lomdm import reveal_log_time, unmask_prob

if TYPE_CHECKING:  # the config module imports this one for `REVEAL_RULES`
    from .generation_config_lomdm import LoMDMGenerationConfig

# `sample(positions, u)`: tokens `(K,)` and float64 probabilities `(K, V)` at the K `positions` `(B, L)` (row-major),
# drawn with the uniforms `u` `(B, L)` (see `LoMDMSampler._sample`).
SampleFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def sample_categorical(
    scores: torch.Tensor, u: torch.Tensor, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Draw one token per row of `scores` `(K, V)` (logits) by inverting the CDF at `u` `(K,)`, u in (0, 1].
    `probs`: their float64 softmax when the caller has it already (it is not computed twice).

    Runs in float64: float32 truncates the tail of the distribution (a token of probability 1e-9 is lost next
    to the cumulative mass), which lowers the effective temperature and fakes low generative perplexity
    (Zheng et al., arXiv 2409.02908). One uniform per token keeps per-row generators cheap to honour.
    """
    cdf = (torch.softmax(scores.double(), dim=-1) if probs is None else probs).cumsum(-1)  # (K, V)
    target = u.double() * cdf[:, -1]  # u > 0, so the draw never lands on a zero-probability token
    return torch.searchsorted(cdf, target[:, None]).squeeze(-1).clamp(max=scores.shape[-1] - 1)  # (K,)


@dataclass
class LoMDMSamplerState:
    """What a [`LoMDMSampler`] carries between the steps of one `generate` call. Only the sampler and its
    reveal rule write it."""

    canvas: torch.LongTensor  # (B, L) z: the mask token where a position is still to be revealed
    attention_mask: torch.LongTensor  # (B, L) 1 = real token, 0 = left padding
    generated: torch.BoolTensor  # (B, L) the set M: positions being generated, revealed or not
    blocks: list[tuple[int, int]]  # semi-AR blocks as column ranges [start, end)
    steps_per_block: int | None
    num_real: list[int]  # real tokens per row: per-row random draws cover exactly these
    reveal_pass: torch.LongTensor  # (B, L) index of the pass that revealed each position, -1 elsewhere
    nfe: torch.LongTensor  # (B,) backbone passes per row
    stale: torch.BoolTensor  # (B,) the canvas changed since the row's last pass
    finished: torch.BoolTensor  # (B,) rows stopped by EOS or stopping criteria
    block_index: int = 0  # the current block
    active: torch.BoolTensor | None = None  # (B, L) generated positions of the current block
    block_total: torch.LongTensor | None = None  # (B,) masked positions of the block when it began
    log_t: torch.Tensor | None = None  # (B,) float64 current time of each row (first-hitting sampler)
    step_index: int = 0  # steps taken in the current block
    log_probs: torch.Tensor | None = None  # (B, L, V) float32 cached log p_θ of each row's last pass
    reverse_exponents: torch.Tensor | None = None  # (B, L) cached ê of each row's last pass


# -- reveal rules --------------------------------------------------------------------------------------------


class RevealRule:
    """How one sampler step picks the positions to reveal and their tokens (SPEC §2); one subclass per `order`.

    The sampler picks its rule once, from `REVEAL_RULES[order]`, so no other code branches on the order name.
    """

    needs_exponents: ClassVar[bool] = False  # reads ê(z): the backbone must return `reverse_exponents`
    accepts_threshold: ClassVar[bool] = False  # takes `threshold` (parallel decoding)

    @classmethod
    def from_config(cls, config: LoMDMGenerationConfig) -> RevealRule:
        """The rule with the settings it reads from `config`."""
        return cls()

    def timesteps(self, state: LoMDMSamplerState, masked: torch.Tensor) -> torch.Tensor:
        """`(B,)` time t of the next pass, for time-conditioned backbones; `masked` `(B, L)`: still masked."""
        raise NotImplementedError

    def reveal(
        self, state: LoMDMSamplerState, masked: torch.Tensor, u: torch.Tensor, sample: SampleFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The `(B, L)` positions to reveal and their tokens `(K,)` (row-major).

        Args:
            state ([`LoMDMSamplerState`]): The sampler's state, with this step's cached passes.
            masked (`torch.BoolTensor` of shape `(B, L)`): Positions of the current block still masked.
            u (`torch.Tensor` of shape `(B, L, 2)`): float64 uniforms in (0, 1]: reveal decision, token draw.
            sample (`SampleFn`): Draws the tokens at given positions from the processed log p_θ.
        """
        raise NotImplementedError


class ScheduleReveal(RevealRule):
    """Reveal by the reverse schedule with exponents ê (SPEC §2): on the τ-grid, a masked position is revealed
    at step t_k -> t_{k+1} with probability `unmask_prob`; with `steps=None`, the exact first-hitting sampler.

    Args:
        eps (`float`, defaults to 0.0): MDLM's time truncation: once t would fall below `eps`, every remaining
            position is revealed at once.
    """

    def __init__(self, eps: float = 0.0):
        self.eps = eps

    @classmethod
    def from_config(cls, config: LoMDMGenerationConfig) -> ScheduleReveal:
        return cls(eps=config.eps)

    def exponents(self, state: LoMDMSamplerState) -> torch.Tensor:
        """`(B, L)` reverse exponents ê of the rows' last passes."""
        raise NotImplementedError

    def timesteps(self, state: LoMDMSamplerState, masked: torch.Tensor) -> torch.Tensor:
        if state.steps_per_block is None:
            return state.log_t.exp()
        return torch.full_like(state.log_t, math.exp(self._grid_log_time(state, state.step_index)))

    def reveal(
        self, state: LoMDMSamplerState, masked: torch.Tensor, u: torch.Tensor, sample: SampleFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        e_hat = self.exponents(state)  # (B, L)
        if state.steps_per_block is None:
            reveal = self._first_hitting(state, masked, u[..., 0], e_hat)
        else:
            reveal = self._grid_step(state, masked, u[..., 0], e_hat)
        return reveal, sample(reveal, u[..., 1])[0]

    def _first_hitting(
        self, state: LoMDMSamplerState, masked: torch.Tensor, u: torch.Tensor, e_hat: torch.Tensor
    ) -> torch.Tensor:
        """Reveal each row's masked position with the latest reveal time and move the row's t there."""
        log_reveal = reveal_log_time(state.log_t[:, None], u, e_hat).masked_fill(~masked, -math.inf)  # (B, L)
        log_next, first = log_reveal.max(-1)  # (B,): the latest reveal time is the next event
        reveal = torch.zeros_like(masked).scatter_(-1, first[:, None], True) & masked
        if self.eps > 0:
            reveal |= masked & (log_next < math.log(self.eps))[:, None]
        state.log_t = torch.where(masked.any(-1), log_next, state.log_t)
        return reveal

    def _grid_step(
        self, state: LoMDMSamplerState, masked: torch.Tensor, u: torch.Tensor, e_hat: torch.Tensor
    ) -> torch.Tensor:
        """The τ-grid step t_k -> t_{k+1}: reveal with probability `unmask_prob(log t_{k+1}, log t_k, ê)`."""
        log_t = torch.tensor(
            self._grid_log_time(state, state.step_index), dtype=torch.float64, device=u.device
        )
        log_s = torch.tensor(
            self._grid_log_time(state, state.step_index + 1), dtype=torch.float64, device=u.device
        )
        return masked & (u < unmask_prob(log_s, log_t, e_hat))

    def _grid_log_time(self, state: LoMDMSamplerState, k: int) -> float:
        """log t_k of the τ-grid: t_k = 1 - (1 - eps) k / S for k < S, and t_S = 0."""
        num_steps = state.steps_per_block
        assert 0 <= k <= num_steps, f"step {k} outside the grid of {num_steps} steps"
        return -math.inf if k == num_steps else math.log1p(-(1.0 - self.eps) * k / num_steps)


class LearnedReveal(ScheduleReveal):
    """`order="learned"`: the model's reverse schedule ê(z) (LoMDM §4)."""

    needs_exponents = True

    def exponents(self, state: LoMDMSamplerState) -> torch.Tensor:
        return state.reverse_exponents


class RandomReveal(ScheduleReveal):
    """`order="random"`: ê ≡ 1, MDLM ancestral sampling (every masked position equally likely next)."""

    def exponents(self, state: LoMDMSamplerState) -> torch.Tensor:
        return torch.ones_like(state.canvas, dtype=torch.float64)


class RankedReveal(RevealRule):
    """Fill each row's reveal quota with its best-scored masked positions (MaskGIT / Dream style, SPEC §2).

    The quota spreads the block's tokens evenly over its steps (one token per step with `steps=None`). Every
    masked position is sampled, then scored by `score`; the chosen ones keep their sampled tokens.
    """

    def timesteps(self, state: LoMDMSamplerState, masked: torch.Tensor) -> torch.Tensor:
        # Ranked orders have no schedule: t is the fraction of the block still masked.
        return masked.sum(-1) / state.block_total.clamp(min=1)

    def score(self, tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """`(K,)` scores of the sampled `tokens` `(K,)` under `probs` `(K, V)`; higher is revealed first."""
        raise NotImplementedError

    def reveal(
        self, state: LoMDMSamplerState, masked: torch.Tensor, u: torch.Tensor, sample: SampleFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, probs = sample(masked, u[..., 1])  # (K,), (K, V): every masked position is a candidate
        scores = torch.full(masked.shape, -math.inf, dtype=torch.float64, device=masked.device)
        scores[masked] = self.score(tokens, probs)  # (B, L); boolean indexing follows the row-major order
        chosen = self.choose(state, scores, masked)
        placed = torch.zeros_like(state.canvas)  # (B, L) sampled tokens; read only at chosen ⊆ masked
        placed[masked] = tokens
        return chosen, placed[chosen]

    def quota(self, state: LoMDMSamplerState) -> torch.Tensor:
        """`(B,)` tokens to reveal this step: floor((k+1) n / S) - floor(k n / S) of the block's n."""
        if state.steps_per_block is None:
            return torch.ones_like(state.block_total)
        k, n, num_steps = state.step_index, state.block_total, state.steps_per_block
        return (k + 1) * n // num_steps - k * n // num_steps

    def choose(self, state: LoMDMSamplerState, scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """The `quota` best-scored eligible positions of each row (ties go to the leftmost)."""
        quota = self.quota(state)  # (B,)
        ranking = scores.masked_fill(~eligible, -math.inf).argsort(dim=-1, descending=True, stable=True)
        positions = torch.arange(scores.shape[1], device=scores.device).expand_as(ranking)
        ranks = torch.empty_like(ranking).scatter_(-1, ranking, positions)  # (B, L) rank of each position
        return eligible & (ranks < quota[:, None])


class ConfidenceReveal(RankedReveal):
    """`order="confidence"`: the probability of the sampled token (MaskGIT; Dream's `maskgit_plus`)."""

    accepts_threshold = True

    @classmethod
    def from_config(cls, config: LoMDMGenerationConfig) -> ConfidenceReveal:
        return ConfidenceReveal() if config.threshold is None else ThresholdReveal(config.threshold)

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

    def quota(self, state: LoMDMSamplerState) -> torch.Tensor:
        return super().quota(state).clamp(min=1)

    def choose(self, state: LoMDMSamplerState, scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        return super().choose(state, scores, eligible) | (eligible & (scores >= self.threshold))


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

    def reveal(
        self, state: LoMDMSamplerState, masked: torch.Tensor, u: torch.Tensor, sample: SampleFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        columns = torch.arange(masked.shape[1], device=masked.device, dtype=torch.float64)
        chosen = self.choose(state, -columns.expand(masked.shape), masked)
        return chosen, sample(chosen, u[..., 1])[0]


class LearnedRankedReveal(RankedReveal):
    """`order="learned_ranked"`: fill each row's quota in the order the learned schedule ranks the positions.

    Under exponents ê a token's reveal time is t* = u^{1/ê}, so -log t* ~ Exponential(ê) and the order of the
    reveals is a Plackett-Luce draw with weights ê: P(i next) = ê_i / Σ_j ê_j over the masked positions (SPEC §1,
    property 3). Gumbel top-k samples exactly that: rank by log ê + g, g ~ Gumbel(0, 1). With `order_temperature`
    τ the rank is log ê + τ·g, i.e. Plackett-Luce weights ê^{1/τ}: τ = 1 keeps the learned order distribution (with
    a fixed number of reveals per step instead of the schedule's random one), τ = 0 takes its most likely order,
    highest ê first, ties broken uniformly at random, and τ = inf ignores ê: a uniformly random order with the
    same per-step quotas (the baseline to compare a learned ranking with). A sharper order matters because the
    exponents learned in a few hundred steps are close (ê = 0.8 vs 0.6 puts the first one first with probability
    0.57 only).

    Args:
        temperature (`float`, defaults to 0.0): τ in [0, inf].
    """

    needs_exponents = True

    def __init__(self, temperature: float = 0.0):
        self.temperature = temperature

    @classmethod
    def from_config(cls, config: LoMDMGenerationConfig) -> LearnedRankedReveal:
        return cls(0.0 if config.order_temperature is None else config.order_temperature)

    def reveal(
        self, state: LoMDMSamplerState, masked: torch.Tensor, u: torch.Tensor, sample: SampleFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gumbel = -torch.log(-torch.log(u[..., 0].clamp(max=1.0 - 1e-12)))  # (B, L) float64
        log_e = state.reverse_exponents.double().log()  # (B, L)
        if self.temperature == math.inf:
            chosen = self.choose(state, gumbel, masked)
        elif self.temperature > 0:
            chosen = self.choose(state, log_e + self.temperature * gumbel, masked)
        else:  # highest ê first; among equal ê the Gumbel rank (uniformly random), not the leftmost position
            by_gumbel = gumbel.argsort(dim=-1, descending=True)
            ranked = self.choose(state, log_e.gather(-1, by_gumbel), masked.gather(-1, by_gumbel))
            chosen = torch.zeros_like(masked).scatter_(-1, by_gumbel, ranked)
        return chosen, sample(chosen, u[..., 1])[0]


# The one place where an `order` name means something; `LoMDMGenerationConfig` accepts exactly these keys.
REVEAL_RULES: dict[str, type[RevealRule]] = {
    "learned": LearnedReveal,
    "random": RandomReveal,
    "confidence": ConfidenceReveal,
    "margin": MarginReveal,
    "entropy": EntropyReveal,
    "left_to_right": LeftToRightReveal,
    "learned_ranked": LearnedRankedReveal,
}


# -- the sampler ---------------------------------------------------------------------------------------------


class LoMDMSampler:
    """The reverse process of SPEC §2 on a fixed canvas. It owns its state ([`LoMDMSamplerState`]) and never
    calls the model: `initialize`, then per block `begin_block`, `step` (with the backbone output of the rows
    `rows_to_denoise` names) until `has_masked` is false, and `end_block`; then `finalize`.

    Args:
        generation_config ([`LoMDMGenerationConfig`]): Resolved settings (`mask_token_id` set).
        logits_processor (`LogitsProcessorList`, *optional*): Applied to log p_θ `(K, V)` before sampling.
        generator (`torch.Generator` or `list[torch.Generator]`, *optional*): One generator, or one per row.
            Either way a row's random draws are indexed from its first real token, so left padding changes
            nothing: a left-padded prompt gives the tokens of the unpadded prompt under the same seed. With
            one per row, row b draws from generator b only and gives the tokens of its prompt run alone with
            generator b. One shared generator draws a `(B, N, 2)` block per step (N = the longest row's real
            length), so there a row's tokens also depend on the batch size and on N.
    """

    def __init__(
        self,
        generation_config: LoMDMGenerationConfig,
        logits_processor: LogitsProcessorList | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ):
        self.rule = REVEAL_RULES[generation_config.order].from_config(generation_config)
        self.steps = generation_config.steps
        self.block_length = generation_config.block_length
        self.greedy = generation_config.temperature == 0
        self.mask_token_id = generation_config.mask_token_id
        self.logits_processor = logits_processor if logits_processor is not None else LogitsProcessorList()
        self.generator = generator
        self.state: LoMDMSamplerState | None = None

    @property
    def needs_exponents(self) -> bool:
        """Whether `step` needs the backbone's reverse exponents ê (`output_exponents=True`)."""
        return self.rule.needs_exponents

    @property
    def canvas(self) -> torch.LongTensor:
        """`(B, L)` the current canvas z (read only)."""
        return self.state.canvas

    @property
    def attention_mask(self) -> torch.LongTensor:
        """`(B, L)` 1 = real token, 0 = left padding."""
        return self.state.attention_mask

    @property
    def generated(self) -> torch.BoolTensor:
        """`(B, L)` the set M of positions being generated (the backbone's `noise_mask`)."""
        return self.state.generated

    @property
    def reveal_pass(self) -> torch.LongTensor:
        """`(B, L)` index (0-based, per row) of the pass that revealed each position, -1 elsewhere."""
        return self.state.reveal_pass

    @property
    def nfe(self) -> torch.LongTensor:
        """`(B,)` backbone passes each row took."""
        return self.state.nfe

    @property
    def num_blocks(self) -> int:
        """Semi-autoregressive blocks of the call (1 without `block_length`)."""
        return len(self.state.blocks)

    def initialize(
        self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor, num_new_tokens: int
    ) -> LoMDMSamplerState:
        """Start a call: append `num_new_tokens` masks to the left-padded prompt `(B, L_in)`; mask tokens on real
        positions are generated. Returns the new state (also `self.state`)."""
        batch, prompt_length = input_ids.shape
        new = torch.full(
            (batch, num_new_tokens), self.mask_token_id, dtype=input_ids.dtype, device=input_ids.device
        )
        canvas = torch.cat([input_ids, new], dim=1)  # (B, L)
        attention_mask = torch.cat([attention_mask, torch.ones_like(new)], dim=1)
        generated = (canvas == self.mask_token_id) & attention_mask.bool()
        num_blocks = 1
        if self.block_length is not None:
            if bool(generated[:, :prompt_length].any()):
                raise ValueError(
                    "`block_length` generates new tokens left to right and cannot be combined with "
                    "mask tokens in the input (infilling)."
                )
            if num_new_tokens % self.block_length != 0:
                raise ValueError(
                    f"`max_new_tokens` ({num_new_tokens}) must be a multiple of `block_length` "
                    f"({self.block_length})."
                )
            num_blocks = num_new_tokens // self.block_length
        if self.steps is not None and self.steps % num_blocks != 0:
            raise ValueError(
                f"`steps` ({self.steps}) must be a multiple of the number of blocks ({num_blocks})."
            )
        if num_blocks == 1:
            blocks = [(0, canvas.shape[1])]
        else:
            blocks = [
                (prompt_length + k * self.block_length, prompt_length + (k + 1) * self.block_length)
                for k in range(num_blocks)
            ]
        self.state = LoMDMSamplerState(
            canvas=canvas,
            attention_mask=attention_mask,
            generated=generated,
            blocks=blocks,
            steps_per_block=None if self.steps is None else self.steps // num_blocks,
            num_real=attention_mask.sum(-1).tolist(),
            reveal_pass=torch.full_like(canvas, -1),
            nfe=torch.zeros(batch, dtype=torch.long, device=canvas.device),
            stale=torch.ones(batch, dtype=torch.bool, device=canvas.device),
            finished=torch.zeros(batch, dtype=torch.bool, device=canvas.device),
        )
        return self.state

    def begin_block(self, index: int) -> None:
        """Start block `index`: time restarts at t = 1 and the reveal quotas count its masked positions."""
        state = self.state
        start, end = state.blocks[index]
        columns = torch.zeros_like(state.generated)
        columns[:, start:end] = True
        state.block_index = index
        state.active = state.generated & columns & ~state.finished[:, None]
        state.block_total = self.masked().sum(-1)
        state.log_t = torch.zeros(state.canvas.shape[0], dtype=torch.float64, device=state.canvas.device)
        state.step_index = 0

    def end_block(
        self, eos_token_id: list[int] | None, stopping_criteria: StoppingCriteriaList | None = None
    ) -> None:
        """Rows whose generated tokens contain an EOS, or that `stopping_criteria` stops on the canvas up to the
        end of the block, take no further blocks."""
        state = self.state
        if eos_token_id is not None:
            is_eos = torch.isin(state.canvas, torch.tensor(eos_token_id, device=state.canvas.device))
            state.finished |= (is_eos & state.generated).any(-1)
        if stopping_criteria:
            end = state.blocks[state.block_index][1]
            state.finished |= stopping_criteria(state.canvas[:, :end], None)

    def masked(self) -> torch.BoolTensor:
        """`(B, L)` positions of the current block that are still masked."""
        return (self.state.canvas == self.mask_token_id) & self.state.active

    def has_masked(self) -> bool:
        """Whether any row still has a masked position in the current block."""
        return bool(self.masked().any())

    def rows_to_denoise(self, use_cache: bool) -> torch.LongTensor:
        """`(R,)` rows that need a backbone pass before the next `step`: those with masked positions, and with
        `use_cache` only those whose canvas changed since their last pass (the others reuse it, MDLM's cache)."""
        rows = self.masked().any(-1)  # (B,)
        if use_cache:
            rows &= self.state.stale
        return rows.nonzero().squeeze(-1)

    def timesteps(self) -> torch.Tensor:
        """`(B,)` time t of the next pass, for time-conditioned backbones."""
        return self.rule.timesteps(self.state, self.masked())

    def step(
        self,
        log_probs: torch.Tensor | None = None,
        reverse_exponents: torch.Tensor | None = None,
        rows: torch.LongTensor | None = None,
    ) -> torch.BoolTensor:
        """Reveal tokens; returns the `(B, L)` positions revealed.

        Args:
            log_probs (`torch.Tensor` of shape `(R, L, V)`, *optional*): log p_θ of a backbone pass on the canvas
                rows `rows`; the other rows reuse their last pass. `None`: every row reuses its last pass.
            reverse_exponents (`torch.Tensor` of shape `(R, L)`, *optional*): ê of that pass; needed when
                `needs_exponents`.
            rows (`torch.LongTensor` of shape `(R,)`, *optional*): The rows of the pass (default: all rows).

        The tokens come from log p_θ after the logits processors, sampled in float64. Each position records
        the index of the pass it was revealed from.
        """
        state = self.state
        if log_probs is not None:
            if rows is None:
                rows = torch.arange(state.canvas.shape[0], device=state.canvas.device)
            self._record_pass(rows, log_probs, reverse_exponents)
        masked = self.masked()  # (B, L)
        u = self._uniform(masked.any(-1))  # (B, L, 2): reveal decision, token draw
        reveal, tokens = self.rule.reveal(state, masked, u, self._sample)
        state.canvas[reveal] = tokens
        state.reveal_pass = torch.where(reveal, (state.nfe - 1)[:, None], state.reveal_pass)
        state.stale |= reveal.any(-1)
        state.step_index += 1
        return reveal

    def finalize(self, eos_token_id: list[int] | None, pad_token_id: int | None) -> torch.LongTensor:
        """The output sequences: generated positions after a row's first EOS, and those a stopped row never
        revealed, become `pad_token_id`; prompt tokens are untouched."""
        state = self.state
        sequences = state.canvas.clone()
        drop = state.generated & (
            sequences == self.mask_token_id
        )  # only rows stopped before their last block
        if eos_token_id is not None:
            is_eos = (
                torch.isin(sequences, torch.tensor(eos_token_id, device=sequences.device)) & state.generated
            )
            drop |= state.generated & (is_eos.long().cumsum(-1) - is_eos.long() > 0)
        if pad_token_id is not None:
            sequences[drop] = pad_token_id
        return sequences

    # -- helpers of `step` -----------------------------------------------------------------------------------

    def _record_pass(
        self, rows: torch.LongTensor, log_probs: torch.Tensor, reverse_exponents: torch.Tensor | None
    ) -> None:
        """Cache a backbone pass on the canvas rows `rows` `(R,)`: log p_θ `(R, L, V)` and ê `(R, L)`."""
        state = self.state
        if reverse_exponents is None and self.needs_exponents:
            raise ValueError("this order reads the reverse exponents ê: pass `reverse_exponents` to `step`.")
        if state.log_probs is None:
            state.log_probs = log_probs.new_empty(state.canvas.shape + log_probs.shape[-1:])
        state.log_probs[rows] = log_probs
        if reverse_exponents is not None:
            if state.reverse_exponents is None:
                state.reverse_exponents = reverse_exponents.new_ones(state.canvas.shape)
            state.reverse_exponents[rows] = reverse_exponents
        state.nfe[rows] += 1
        state.stale[rows] = False

    def _uniform(self, stepping: torch.Tensor) -> torch.Tensor:
        """`(B, L, 2)` float64 uniforms in (0, 1] (reveal decision, token draw), indexed by the position counted
        from each row's first real token, so left padding never changes a row's draws.

        One generator (or none): one `(B, N, 2)` block per step, N = the longest row's real length; row b reads
        its row of the block from its first real token. With a list, row b draws `(its real tokens, 2)` from
        generator b, and only while it still has masked positions (`stepping` `(B,)`), so its draws do not
        depend on the batch.
        """
        state = self.state
        batch, length = state.canvas.shape
        device = state.canvas.device
        num_real = torch.tensor(state.num_real, device=device)  # (B,)
        width = max(state.num_real)
        if not isinstance(self.generator, list):
            source = device if self.generator is None else self.generator.device
            drawn = torch.rand(batch, width, 2, generator=self.generator, dtype=torch.float64, device=source)
            drawn = drawn.to(device)  # (B, N, 2)
        else:
            drawn = torch.zeros(batch, width, 2, dtype=torch.float64, device=device)
            for row, (gen, n, live) in enumerate(zip(self.generator, state.num_real, stepping.tolist())):
                if live:
                    drawn[row, :n] = torch.rand(n, 2, generator=gen, dtype=torch.float64, device=gen.device)
        # Left padding: the real tokens are the last n_b columns, so column j is position j - (L - n_b).
        # Padding columns read position 0; they are never masked, so their draws are never used.
        position = (torch.arange(length, device=device) - (length - num_real)[:, None]).clamp(min=0)  # (B, L)
        return 1.0 - drawn.gather(1, position[..., None].expand(-1, -1, 2))  # (B, L, 2)

    def _sample(self, positions: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `(K,)` and float64 probabilities `(K, V)` at the K `positions` `(B, L)` (row-major), drawn
        with `u` `(B, L)` from the processed log p_θ (the argmax when greedy)."""
        rows, columns = positions.nonzero(as_tuple=True)
        scores = self.logits_processor(self.state.canvas[rows], self.state.log_probs[rows, columns])  # (K, V)
        probs = torch.softmax(scores.double(), dim=-1)
        tokens = probs.argmax(-1) if self.greedy else sample_categorical(scores, u[rows, columns], probs)
        return tokens, probs


__all__ = [
    "REVEAL_RULES",
    "ConfidenceReveal",
    "EntropyReveal",
    "LearnedReveal",
    "LeftToRightReveal",
    "LoMDMSampler",
    "LoMDMSamplerState",
    "MarginReveal",
    "RandomReveal",
    "RankedReveal",
    "RevealRule",
    "ScheduleReveal",
    "ThresholdReveal",
    "sample_categorical",
]
