"""Sampling from LoMDM: `model.generate` with learned-order and classic masked-diffusion samplers (SPEC §2).

Shapes: B = batch (after `num_return_sequences`), L = canvas length (left-padded prompt + new tokens),
V = vocabulary, K = number of positions sampled in one step.

The canvas z holds the prompt, the `max_new_tokens` mask tokens appended to it and any mask token already in
the input (infilling). The positions to fill are the set M of SPEC §1 (`noise_mask`), fixed for the whole
call. One backbone pass on z gives log p_θ(· | z) (SUBS log-probabilities) and the reverse exponents ê(z); the
sampler then reveals masked positions:

- `order="learned"`, `steps=S`: the τ-grid 1 = t_0 > ... > t_S = 0 (LoMDM §4, reverse process); every masked
  position is revealed with probability `schedule_lomdm.unmask_prob(log s, log t, ê)`.
- `order="learned"`, `steps=None`: the exact first-hitting sampler. z is fixed between reveals, so each masked
  position's next reveal time is `schedule_lomdm.reveal_log_time(log t, u, ê)`; the latest is revealed and t
  moves there. This simulates the continuous-time reverse process exactly, one pass per token.
- `order="random"`: the same code with ê ≡ 1 (MDLM ancestral sampling).
- `confidence` / `margin` / `entropy` / `left_to_right`: per-row reveal quotas filled by score (MaskGIT /
  Dream style); `threshold` additionally reveals every token whose probability reaches it (parallel decoding).

Revealed and prompt tokens never change. When a row's canvas has not changed since its last pass and the
backbone is time-independent, that pass is reused (the cache); `nfe` counts the real passes of each row.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.streamers import BaseStreamer
from transformers.utils import ModelOutput, logging

from .schedule_lomdm import reveal_log_time, unmask_prob

logger = logging.get_logger(__name__)

ORDERS = ("learned", "random", "confidence", "margin", "entropy", "left_to_right")
SCHEDULE_ORDERS = ("learned", "random")
# Dream's `alg` names (Dream-v0 `diffusion_generate`) and the order that implements each.
DREAM_ALGORITHMS = {
    "origin": "random",
    "maskgit_plus": "confidence",
    "topk_margin": "margin",
    "entropy": "entropy",
}
_SPECIAL_TOKENS = ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LoMDMGenerationConfig(GenerationConfig):
    r"""
    Sampling settings of [`LoMDMGenerationMixin.generate`], saved as `generation_config.json`.

    Args:
        > Length

        max_new_tokens (`int`, *optional*): Mask tokens appended to the prompt. Defaults to `max_length` minus
            the prompt length, or to 0 (pure infilling) when neither is set.
        max_length (`int`, *optional*): Total length of the output (prompt included).

        > Sampler

        steps (`int`, *optional*): Sampler steps. `None`: the exact first-hitting sampler for `learned` /
            `random` and one token per pass for the other orders. Never more passes than `steps` per row.
        order (`str`, defaults to `"learned"`): `learned` (the model's reverse schedule ê), `random` (ê ≡ 1,
            MDLM), `confidence` (probability of the sampled token), `margin` (top-1 minus top-2 probability),
            `entropy` (lowest entropy first) or `left_to_right`.
        threshold (`float`, *optional*): With `order="confidence"`, also reveal every position whose sampled
            token has probability ≥ `threshold`; at least one token per row per step.
        block_length (`int`, *optional*): Semi-autoregressive blocks of this many new tokens, generated left
            to right (`max_new_tokens` and `steps` must split evenly). Not available with infilling.
        eps (`float`, defaults to 0.0): MDLM's time truncation for `learned` / `random`: once t would fall
            below `eps`, every remaining position is revealed at once. 0 keeps the sampler exact.
        use_cache (`bool`, defaults to `True`): Reuse a row's last pass while its canvas is unchanged (only
            when the backbone is not time-conditioned, where it is exact).

        > Token distribution (applied to log p_θ before sampling, through transformers' warpers)

        temperature (`float`, defaults to 1.0): Softmax temperature; 0 picks the most likely token (greedy).
        top_k (`int`, *optional*): Keep the `top_k` most likely tokens.
        top_p (`float`, *optional*): Nucleus sampling mass.

        > Outputs

        num_return_sequences (`int`, defaults to 1): Samples per input row.
        return_dict_in_generate (`bool`, defaults to `False`): Return a [`LoMDMGenerateOutput`], not a tensor.
        output_order (`bool`, defaults to `False`): Also return the pass index that revealed each position.
        output_history (`bool`, defaults to `False`): Also return the canvas after each revealing step.

        > Special tokens (default to the model config's)

        mask_token_id (`int`): The mask token; must equal the model's.
        pad_token_id (`int`, *optional*): Fills the generated positions after the first EOS (default: EOS).
        bos_token_id (`int`, *optional*): Prompt used when `generate` is called without inputs.
        eos_token_id (`int` or `list[int]`, *optional*): End of sequence; a row whose block contains it stops.
    """

    def __init__(self, **kwargs: Any):
        # GenerationConfig.__init__ is not called on purpose (as in diffusion_gemma): its autoregressive
        # fields (beams, penalties, ...) mean nothing here, and an unknown field must raise instead of being
        # stored.
        self.max_new_tokens: int | None = kwargs.pop("max_new_tokens", None)
        self.max_length: int | None = kwargs.pop("max_length", None)

        self.steps: int | None = kwargs.pop("steps", None)
        self.order: str = kwargs.pop("order", "learned")
        self.threshold: float | None = kwargs.pop("threshold", None)
        self.block_length: int | None = kwargs.pop("block_length", None)
        self.eps: float = kwargs.pop("eps", 0.0)
        self.use_cache: bool = kwargs.pop("use_cache", True)

        self.temperature: float = kwargs.pop("temperature", 1.0)
        self.top_k: int | None = kwargs.pop("top_k", None)
        self.top_p: float | None = kwargs.pop("top_p", None)

        self.num_return_sequences: int = kwargs.pop("num_return_sequences", 1)
        self.return_dict_in_generate: bool = kwargs.pop("return_dict_in_generate", False)
        self.output_order: bool = kwargs.pop("output_order", False)
        self.output_history: bool = kwargs.pop("output_history", False)

        self.mask_token_id: int | None = kwargs.pop("mask_token_id", None)
        self.pad_token_id: int | None = kwargs.pop("pad_token_id", None)
        self.bos_token_id: int | None = kwargs.pop("bos_token_id", None)
        self.eos_token_id: int | list[int] | None = kwargs.pop("eos_token_id", None)

        # Metadata written by transformers.
        kwargs.pop("_commit_hash", None)
        self._from_model_config: bool | None = kwargs.pop("_from_model_config", None)
        self.transformers_version: str | None = kwargs.pop("transformers_version", None)

        if kwargs:
            raise ValueError(
                f"unknown LoMDM generation settings {sorted(kwargs)}; valid ones are {self.field_names}."
            )
        self.validate()

    @property
    def field_names(self) -> list[str]:
        return [name for name in vars(self) if not name.startswith("_") and name != "transformers_version"]

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the fields named in `kwargs`, validate, and return the entries that are not fields."""
        known = set(self.field_names)
        for key, value in kwargs.items():
            if key in known:
                setattr(self, key, value)
        self.validate()
        return {key: value for key, value in kwargs.items() if key not in known}

    def validate(self, strict: bool = True) -> None:
        """Raise a `ValueError` naming the first invalid setting.

        Every problem raises, whatever `strict` says (it is part of `GenerationConfig.validate`'s signature,
        which `save_pretrained` calls).
        """
        positive = {
            "max_length": self.max_length,
            "steps": self.steps,
            "block_length": self.block_length,
            "top_k": self.top_k,
            "num_return_sequences": self.num_return_sequences,
        }
        for name, value in positive.items():
            if value is not None and (not _is_int(value) or value <= 0):
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.max_new_tokens is not None and (not _is_int(self.max_new_tokens) or self.max_new_tokens < 0):
            raise ValueError(f"`max_new_tokens` must be an integer >= 0, got {self.max_new_tokens!r}.")
        if self.order not in ORDERS:
            raise ValueError(f"`order` must be one of {ORDERS}, got {self.order!r}.")
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not 0.0 < self.threshold <= 1.0:
                raise ValueError(f"`threshold` must be in (0, 1], got {self.threshold!r}.")
            if self.order != "confidence":
                raise ValueError(
                    f"`threshold` decoding ranks by confidence and needs order='confidence', "
                    f"got order={self.order!r}."
                )
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0.0 <= self.eps < 1.0:
            raise ValueError(f"`eps` must be in [0, 1), got {self.eps!r}.")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or self.temperature < 0
        ):
            raise ValueError(f"`temperature` must be a number >= 0 (0 = greedy), got {self.temperature!r}.")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not 0.0 < self.top_p <= 1.0):
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p!r}.")
        for name in ("use_cache", "return_dict_in_generate", "output_order", "output_history"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")  # noqa: TRY004 (SPEC §3)
        for name in ("output_order", "output_history"):
            if getattr(self, name) and not self.return_dict_in_generate:
                raise ValueError(
                    f"`{name}=True` needs `return_dict_in_generate=True` (a tensor has no room for it)."
                )
        for name in _SPECIAL_TOKENS:
            value = getattr(self, name)
            ids = value if name == "eos_token_id" and isinstance(value, list) else [value]
            if value is not None and not all(_is_int(i) and i >= 0 for i in ids):
                raise ValueError(f"`{name}` must be a non-negative token id, got {value!r}.")

    @classmethod
    def from_model_config(cls, model_config: Any) -> LoMDMGenerationConfig:
        """Default sampling settings with the special token ids of a model config (or its dict)."""
        config = model_config if isinstance(model_config, dict) else model_config.to_dict()
        return cls(**{name: config.get(name) for name in _SPECIAL_TOKENS})


@dataclass
class LoMDMGenerateOutput(ModelOutput):
    """
    Args:
        sequences (`torch.LongTensor` of shape `(B, L)`): Prompt and generated tokens; generated positions
            after the first EOS of a row hold the pad token.
        order (`torch.LongTensor` of shape `(B, L)`, *optional*): Index (0-based, per row) of the backbone
            pass whose prediction revealed each position; -1 for prompt and padding tokens and for positions a
            stopped row never revealed. Returned when `output_order=True`.
        history (`tuple[torch.LongTensor]`, *optional*): The canvas `(B, L)` after every step that revealed
            tokens. Returned when `output_history=True`.
        nfe (`torch.LongTensor` of shape `(B,)`): Backbone passes each row took.
    """

    sequences: torch.LongTensor | None = None
    order: torch.LongTensor | None = None
    history: tuple[torch.LongTensor, ...] | None = None
    nfe: torch.LongTensor | None = None


def sample_categorical(scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of `scores` `(K, V)` (logits) by inverting the CDF at `u` `(K,)`, u in (0, 1].

    Runs in float64: float32 truncates the tail of the distribution (a token of probability 1e-9 is lost next
    to the cumulative mass), which lowers the effective temperature and fakes low generative perplexity
    (Zheng et al., arXiv 2409.02908). One uniform per token keeps per-row generators cheap to honour.
    """
    cdf = torch.softmax(scores.double(), dim=-1).cumsum(-1)  # (K, V)
    target = u.double() * cdf[:, -1]  # u > 0, so the draw never lands on a zero-probability token
    return torch.searchsorted(cdf, target[:, None]).squeeze(-1).clamp(max=scores.shape[-1] - 1)  # (K,)


@dataclass
class LoMDMSamplerState:
    """What the sampler carries between steps of one `generate` call."""

    canvas: torch.LongTensor  # (B, L) z: the mask token where a position is still to be revealed
    attention_mask: torch.LongTensor  # (B, L) 1 = real token, 0 = left padding
    generated: torch.BoolTensor  # (B, L) the set M: positions being generated, revealed or not
    blocks: list[tuple[int, int]]  # semi-AR blocks as column ranges [start, end)
    steps_per_block: int | None
    num_real: list[int]  # real tokens per row: per-row random draws cover exactly these
    order: torch.LongTensor  # (B, L) pass index that revealed each position, -1 elsewhere
    nfe: torch.LongTensor  # (B,) backbone passes per row
    stale: torch.BoolTensor  # (B,) the canvas changed since the row's last pass
    finished: torch.BoolTensor  # (B,) rows stopped by EOS or stopping criteria
    active: torch.BoolTensor | None = None  # (B, L) generated positions of the current block
    block_total: torch.LongTensor | None = None  # (B,) masked positions of the block when it began
    log_t: torch.Tensor | None = None  # (B,) float64 current time of each row (first-hitting sampler)
    step_index: int = 0  # steps taken in the current block
    log_probs: torch.Tensor | None = None  # (B, L, V) float32 cached log p_θ of each row's last pass
    reverse_exponents: torch.Tensor | None = None  # (B, L) cached ê of each row's last pass
    history: list[torch.LongTensor] = field(default_factory=list)
    streamed: int = 0  # next column of row 0 to hand to a streamer


class LoMDMSampler:
    """The reverse process of SPEC §2 on a fixed canvas: `initialize`, then per block `begin_block` and `step`
    after each backbone pass (`record_pass`), then `finalize`. It never calls the model.

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
        self.order = generation_config.order
        self.steps = generation_config.steps
        self.block_length = generation_config.block_length
        self.threshold = generation_config.threshold
        self.eps = generation_config.eps
        self.greedy = generation_config.temperature == 0
        self.mask_token_id = generation_config.mask_token_id
        self.logits_processor = logits_processor if logits_processor is not None else LogitsProcessorList()
        self.generator = generator

    def initialize(
        self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor, num_new_tokens: int
    ) -> LoMDMSamplerState:
        """Append `num_new_tokens` masks to the left-padded prompt; masks on real positions are generated."""
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
        return LoMDMSamplerState(
            canvas=canvas,
            attention_mask=attention_mask,
            generated=generated,
            blocks=blocks,
            steps_per_block=None if self.steps is None else self.steps // num_blocks,
            num_real=attention_mask.sum(-1).tolist(),
            order=torch.full_like(canvas, -1),
            nfe=torch.zeros(batch, dtype=torch.long, device=canvas.device),
            stale=torch.ones(batch, dtype=torch.bool, device=canvas.device),
            finished=torch.zeros(batch, dtype=torch.bool, device=canvas.device),
        )

    def begin_block(self, state: LoMDMSamplerState, index: int) -> None:
        """Start block `index`: time restarts at t = 1 and the reveal quotas count its masked positions."""
        start, end = state.blocks[index]
        columns = torch.zeros_like(state.generated)
        columns[:, start:end] = True
        state.active = state.generated & columns & ~state.finished[:, None]
        state.block_total = self.masked(state).sum(-1)
        state.log_t = torch.zeros(state.canvas.shape[0], dtype=torch.float64, device=state.canvas.device)
        state.step_index = 0

    def masked(self, state: LoMDMSamplerState) -> torch.BoolTensor:
        """`(B, L)` positions of the current block that are still masked."""
        return (state.canvas == self.mask_token_id) & state.active

    def timesteps(self, state: LoMDMSamplerState) -> torch.Tensor:
        """`(B,)` time t of the next pass, for time-conditioned backbones."""
        if self.order in SCHEDULE_ORDERS and state.steps_per_block is None:
            return state.log_t.exp()
        if self.order in SCHEDULE_ORDERS:
            return torch.full_like(state.log_t, math.exp(self._grid_log_time(state, state.step_index)))
        # Score orders have no schedule: t is the fraction of the block still masked.
        return self.masked(state).sum(-1) / state.block_total.clamp(min=1)

    def record_pass(
        self,
        state: LoMDMSamplerState,
        rows: torch.LongTensor,
        log_probs: torch.Tensor,
        reverse_exponents: torch.Tensor | None,
    ) -> None:
        """Cache a backbone pass on the canvas rows `rows` `(R,)`: log p_θ `(R, L, V)` and ê `(R, L)`."""
        if state.log_probs is None:
            state.log_probs = log_probs.new_empty(state.canvas.shape + log_probs.shape[-1:])
        state.log_probs[rows] = log_probs
        if reverse_exponents is not None:
            if state.reverse_exponents is None:
                state.reverse_exponents = reverse_exponents.new_ones(state.canvas.shape)
            state.reverse_exponents[rows] = reverse_exponents
        state.nfe[rows] += 1
        state.stale[rows] = False

    def step(self, state: LoMDMSamplerState) -> torch.BoolTensor:
        """Reveal tokens from the cached passes; returns the `(B, L)` positions revealed.

        The tokens come from log p_θ after the logits processors, sampled in float64. Each position records
        the index of the pass it was revealed from.
        """
        masked = self.masked(state)  # (B, L)
        u = self._uniform(state, masked.any(-1))  # (B, L, 2): reveal decision, token draw
        if self.order in SCHEDULE_ORDERS:
            reveal = self._schedule_reveal(state, masked, u[..., 0])
            tokens, _ = self._sample(state, reveal, u[..., 1])
        else:
            reveal, tokens = self._ranked_reveal(state, masked, u[..., 1])
        state.canvas[reveal] = tokens
        state.order = torch.where(reveal, (state.nfe - 1)[:, None], state.order)
        state.stale |= reveal.any(-1)
        state.step_index += 1
        return reveal

    def finalize(
        self, state: LoMDMSamplerState, eos_token_id: list[int] | None, pad_token_id: int | None
    ) -> torch.LongTensor:
        """The output sequences: generated positions after a row's first EOS, and those a stopped row never
        revealed, become `pad_token_id`; prompt tokens are untouched."""
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

    # -- reveal rules ----------------------------------------------------------------------------------------

    def _schedule_reveal(
        self, state: LoMDMSamplerState, masked: torch.Tensor, u: torch.Tensor
    ) -> torch.Tensor:
        """`learned` / `random`: the τ-grid step t_k -> t_{k+1}, or the exact first-hitting step."""
        e_hat = state.reverse_exponents if self.order == "learned" else torch.ones_like(u)  # (B, L)
        if state.steps_per_block is None:
            log_reveal = reveal_log_time(state.log_t[:, None], u, e_hat).masked_fill(
                ~masked, -math.inf
            )  # (B, L)
            log_next, first = log_reveal.max(-1)  # (B,): the latest reveal time is the next event
            reveal = torch.zeros_like(masked).scatter_(-1, first[:, None], True) & masked
            if self.eps > 0:
                reveal |= masked & (log_next < math.log(self.eps))[:, None]
            state.log_t = torch.where(masked.any(-1), log_next, state.log_t)
            return reveal
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

    def _ranked_reveal(
        self, state: LoMDMSamplerState, masked: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score orders: fill each row's quota with its best-scored masked positions (plus `threshold`)."""
        if self.order == "left_to_right":
            columns = torch.arange(masked.shape[1], device=masked.device, dtype=torch.float64)
            chosen = self._top_quota(state, -columns.expand(masked.shape), masked)
            return chosen, self._sample(state, chosen, u)[0]
        tokens, probs = self._sample(state, masked, u)  # (K,), (K, V): every masked position is a candidate
        if self.order == "confidence":
            score = probs.gather(-1, tokens[:, None]).squeeze(-1)
        elif self.order == "margin":
            top2 = probs.topk(2, dim=-1).values
            score = top2[:, 0] - top2[:, 1]
        else:  # entropy: sum p log p = -H, so the most certain position scores highest
            score = torch.special.xlogy(probs, probs).sum(-1)
        scores = torch.full(masked.shape, -math.inf, dtype=torch.float64, device=masked.device)
        scores[masked] = score  # (B, L); boolean indexing follows the row-major order of `_sample`
        chosen = self._top_quota(state, scores, masked)
        if self.threshold is not None:
            chosen |= masked & (scores >= self.threshold)
        canvas_tokens = torch.full_like(state.canvas, self.mask_token_id)
        canvas_tokens[masked] = tokens
        return chosen, canvas_tokens[chosen]

    def _top_quota(
        self, state: LoMDMSamplerState, scores: torch.Tensor, eligible: torch.Tensor
    ) -> torch.Tensor:
        """The `quota` best-scored eligible positions of each row (ties go to the leftmost)."""
        if state.steps_per_block is None:
            quota = torch.ones_like(state.block_total)
        else:  # spread the block's tokens evenly over its steps: floor((k+1) n / S) - floor(k n / S)
            k, n, num_steps = state.step_index, state.block_total, state.steps_per_block
            quota = (k + 1) * n // num_steps - k * n // num_steps  # (B,)
        if self.threshold is not None:
            quota = quota.clamp(min=1)
        ranking = scores.masked_fill(~eligible, -math.inf).argsort(dim=-1, descending=True, stable=True)
        positions = torch.arange(scores.shape[1], device=scores.device).expand_as(ranking)
        ranks = torch.empty_like(ranking).scatter_(-1, ranking, positions)  # (B, L) rank of each position
        return eligible & (ranks < quota[:, None])

    # -- randomness ------------------------------------------------------------------------------------------

    def _uniform(self, state: LoMDMSamplerState, stepping: torch.Tensor) -> torch.Tensor:
        """`(B, L, 2)` float64 uniforms in (0, 1] (reveal decision, token draw), indexed by the position counted
        from each row's first real token, so left padding never changes a row's draws.

        One generator (or none): one `(B, N, 2)` block per step, N = the longest row's real length; row b reads
        its row of the block from its first real token. With a list, row b draws `(its real tokens, 2)` from
        generator b, and only while it still has masked positions, so its draws do not depend on the batch.
        """
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

    def _sample(
        self, state: LoMDMSamplerState, positions: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `(K,)` and float64 probabilities `(K, V)` at the K `positions` (row-major), processed."""
        rows, columns = positions.nonzero(as_tuple=True)
        scores = self.logits_processor(state.canvas[rows], state.log_probs[rows, columns])  # (K, V)
        probs = torch.softmax(scores.double(), dim=-1)
        tokens = probs.argmax(-1) if self.greedy else sample_categorical(scores, u[rows, columns])
        return tokens, probs


class LoMDMGenerationMixin:
    """`generate` for [`LoMDMForMaskedDiffusion`] (SPEC §2). The class name contains `GenerationMixin`, which
    is how transformers recognises a generative model and builds / loads its `generation_config`."""

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer: BaseStreamer | None = None,
        **kwargs: Any,
    ) -> LoMDMGenerateOutput | torch.LongTensor:
        r"""
        Fill the mask tokens of a canvas: prompts get `max_new_tokens` masks appended, mask tokens already in
        the input are filled in place (infilling), every other token is kept.

        Args:
            inputs (`torch.LongTensor` of shape `(B, L_in)`, *optional*): Left-padded prompts (may contain
                mask tokens). Defaults to one BOS token (or an empty prompt without BOS). Also accepted as
                `input_ids=`.
            generation_config ([`LoMDMGenerationConfig`], *optional*): Replaces `model.generation_config`.
            logits_processor (`LogitsProcessorList`, *optional*): Applied to log p_θ `(K, V)` of the positions
                being sampled, before temperature / top-k / top-p.
            stopping_criteria (`StoppingCriteriaList`, *optional*): Checked after each block on the canvas up
                to the end of that block; a row it stops gets no further blocks (they become padding).
            streamer (`BaseStreamer`, *optional*): Batch size 1. Receives the prompt, then the tokens in
                reading order as soon as every position before them is known (each revealed token once), up
                to the first EOS.
            kwargs: `attention_mask` `(B, L_in)`, `generator` (a `torch.Generator` or one per output row)
                and any [`LoMDMGenerationConfig`] field; anything else raises a `ValueError`. Random draws
                count from each row's first real token, so left padding changes no row; with one generator
                per row, row b equals its prompt run alone with generator b (see [`LoMDMSampler`]).

        Returns:
            `torch.LongTensor` `(B, L)` or, with `return_dict_in_generate=True`, a [`LoMDMGenerateOutput`].

        Steps (keep in sync with the body):
            1. Resolve the settings (kwargs > `generation_config` > `model.generation_config`) and the inputs.
            2. Build the canvas and the sampler.
            3. For each block, until it has no mask left: (a) one backbone pass on the rows that need it (all
               rows without cache; with cache, rows whose canvas changed), (b) `sampler.step` reveals tokens,
               (c) stream and record history. After the block, rows that produced EOS or meet
               `stopping_criteria` stop.
            4. Finalize (padding after EOS) and build the output.
        """
        # 1. Settings and inputs.
        generation_config, model_kwargs = self._prepare_generation_config(generation_config, kwargs)
        input_ids, attention_mask = self._prepare_generation_inputs(inputs, model_kwargs, generation_config)
        num_new_tokens = self._num_new_tokens(
            input_ids, attention_mask, generation_config, self.config.max_position_embeddings
        )
        eos_token_id = generation_config.eos_token_id
        eos_token_id = [eos_token_id] if _is_int(eos_token_id) else (eos_token_id or None)  # [] disables EOS
        pad_token_id = generation_config.pad_token_id
        if pad_token_id is None and eos_token_id is not None:
            pad_token_id = eos_token_id[0]
        if stopping_criteria and pad_token_id is None:
            raise ValueError(
                "`stopping_criteria` can stop rows early, which needs a `pad_token_id` or `eos_token_id`."
            )
        generator = model_kwargs.get("generator")
        if isinstance(generator, list) and len(generator) != input_ids.shape[0]:
            raise ValueError(
                f"`generator` must be one generator or a list with one per output row "
                f"({input_ids.shape[0]}), got a list of {len(generator)}."
            )
        if streamer is not None and input_ids.shape[0] != 1:
            raise ValueError(f"streamers take one sequence; got {input_ids.shape[0]} output rows.")

        # 2. Canvas and sampler.
        sampler = LoMDMSampler(
            generation_config, self._logits_processor(generation_config, logits_processor), generator
        )
        state = sampler.initialize(input_ids, attention_mask, num_new_tokens)
        cached = generation_config.use_cache and not self.is_time_conditioned
        if streamer is not None:
            self._stream_prompt(streamer, state)

        # 3. Denoise block by block.
        for block in range(len(state.blocks)):
            sampler.begin_block(state, block)
            while True:
                has_masked = sampler.masked(state).any(-1)  # (B,)
                if not bool(has_masked.any()):
                    break
                rows = has_masked & state.stale if cached else has_masked
                if bool(rows.any()):
                    self._denoise(
                        sampler, state, rows.nonzero().squeeze(-1), generation_config.order == "learned"
                    )
                revealed = sampler.step(state)
                if streamer is not None:
                    self._stream_known(streamer, state, sampler.mask_token_id, eos_token_id)
                if generation_config.output_history and bool(revealed.any()):
                    state.history.append(state.canvas.clone())
            if eos_token_id is not None:
                is_eos = torch.isin(state.canvas, torch.tensor(eos_token_id, device=state.canvas.device))
                state.finished |= (is_eos & state.generated).any(-1)
            if stopping_criteria:
                state.finished |= stopping_criteria(state.canvas[:, : state.blocks[block][1]], None)

        # 4. Output.
        sequences = sampler.finalize(state, eos_token_id, pad_token_id)
        if streamer is not None:
            streamer.end()
        if not generation_config.return_dict_in_generate:
            return sequences
        return LoMDMGenerateOutput(
            sequences=sequences,
            order=state.order if generation_config.output_order else None,
            history=tuple(state.history) if generation_config.output_history else None,
            nfe=state.nfe,
        )

    def diffusion_generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> LoMDMGenerateOutput | torch.LongTensor:
        """`generate` under Dream's argument names: `alg` in `DREAM_ALGORITHMS` ('origin', 'maskgit_plus',
        'topk_margin', 'entropy') selects the order; `steps`, `max_new_tokens`, `max_length`, `temperature`,
        `top_p`, `top_k`, `eps`, `output_history`, `return_dict_in_generate` and the token ids keep their
        meaning."""
        if "alg" in kwargs:
            alg = kwargs.pop("alg")
            if alg not in DREAM_ALGORITHMS:
                raise ValueError(f"`alg` must be one of {sorted(DREAM_ALGORITHMS)}, got {alg!r}.")
            if "order" in kwargs:
                raise ValueError("pass either `alg` or `order`, not both.")
            kwargs["order"] = DREAM_ALGORITHMS[alg]
        return self.generate(inputs, generation_config, **kwargs)

    def adjust_generation_fn(
        self,
        generation_config: GenerationConfig | None,
        from_auto_class: bool,
        from_pipeline: str | None,
        pretrained_model_name_or_path: str | None,
        cache_dir: str | None = None,
        force_download: bool = False,
        proxies: dict[str, str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str | None = None,
        subfolder: str = "",
        **kwargs: Any,
    ) -> None:
        """Called by `from_pretrained`: load `generation_config.json` as `generation_config_class`.

        transformers' own version loads a plain `GenerationConfig`; the other `from_pretrained` kwargs are not
        generation settings and are not forwarded (the config would reject them).
        """
        if generation_config is not None:
            self.generation_config = (
                generation_config
                if isinstance(generation_config, self.generation_config_class)
                else self.generation_config_class(**generation_config.to_diff_dict())
            )
            return
        if pretrained_model_name_or_path is None:
            return
        try:
            self.generation_config = self.generation_config_class.from_pretrained(
                pretrained_model_name_or_path,
                cache_dir=cache_dir,
                force_download=force_download,
                proxies=proxies,
                local_files_only=local_files_only,
                token=token,
                revision=revision or "main",
                subfolder=subfolder,
                _from_auto=from_auto_class,
                _from_pipeline=from_pipeline,
            )
        except OSError:
            logger.info("No generation_config.json found; keeping the defaults built from the model config.")

    # -- helpers of `generate` -------------------------------------------------------------------------------

    def _prepare_generation_config(
        self, generation_config: GenerationConfig | None, kwargs: dict[str, Any]
    ) -> tuple[LoMDMGenerationConfig, dict[str, Any]]:
        """kwargs override the config; special token ids left unset come from the model config."""
        base = self.generation_config if generation_config is None else generation_config
        if isinstance(base, LoMDMGenerationConfig):
            config = copy.deepcopy(base)
        else:  # e.g. a plain GenerationConfig: keep its non-default fields, which must all be LoMDM fields
            config = LoMDMGenerationConfig(**base.to_diff_dict())
        kwargs = dict(kwargs)
        model_kwargs = {
            name: kwargs.pop(name) for name in ("input_ids", "attention_mask", "generator") if name in kwargs
        }
        unknown = config.update(**kwargs)
        if unknown:
            raise ValueError(
                f"`generate` got unknown arguments {sorted(unknown)}; it takes `input_ids`, "
                f"`attention_mask`, `generator` and the generation settings {config.field_names}."
            )
        for name in _SPECIAL_TOKENS:
            if getattr(config, name) is None:
                setattr(config, name, getattr(self.config, name, None))
        if config.mask_token_id != self.config.mask_token_id:
            raise ValueError(
                f"`mask_token_id` ({config.mask_token_id}) differs from the model's "
                f"({self.config.mask_token_id})."
            )
        config.validate()
        return config, model_kwargs

    def _prepare_generation_inputs(
        self, inputs: torch.LongTensor | None, model_kwargs: dict[str, Any], config: LoMDMGenerationConfig
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Validated `(B, L_in)` ids and attention mask, repeated `num_return_sequences` times."""
        if inputs is not None and "input_ids" in model_kwargs:
            raise ValueError("pass the prompt either as `inputs` or as `input_ids`, not both.")
        input_ids = model_kwargs.get("input_ids", inputs)
        if input_ids is None:
            prompt = [] if config.bos_token_id is None else [config.bos_token_id]
            input_ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(
                f"`inputs` must be a (batch, length) tensor, got {type(input_ids).__name__} of shape "
                f"{getattr(input_ids, 'shape', None)}."
            )
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"`inputs` must hold integer token ids, got dtype {input_ids.dtype}.")
        attention_mask = model_kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of the inputs {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}."
            )
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("`attention_mask` must hold only 0 and 1.")
        attention_mask = attention_mask.to(input_ids.dtype)
        if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise ValueError(
                "`generate` needs left padding (new tokens are appended on the right); set "
                "`tokenizer.padding_side = 'left'`."
            )
        repeats = config.num_return_sequences
        return input_ids.repeat_interleave(repeats, dim=0), attention_mask.repeat_interleave(repeats, dim=0)

    @staticmethod
    def _num_new_tokens(
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        config: LoMDMGenerationConfig,
        max_positions: int,
    ) -> int:
        """Masks to append; raises when the prompt or the canvas does not fit in `max_positions`."""
        # Checked first: a prompt past the limit would otherwise surface as "nothing to generate" (max_length
        # below the prompt) or as a backbone error on the padded canvas.
        prompt_length = int(attention_mask.sum(-1).max()) if input_ids.numel() else 0
        if prompt_length > max_positions:
            raise ValueError(
                f"the prompt has {prompt_length} tokens, more than the model accepts "
                f"(max_position_embeddings={max_positions}); shorten it."
            )
        if config.max_new_tokens is not None:
            num_new_tokens = config.max_new_tokens
        elif config.max_length is not None:
            num_new_tokens = max(config.max_length - input_ids.shape[1], 0)
        else:
            num_new_tokens = 0
        has_infill = bool(((input_ids == config.mask_token_id) & attention_mask.bool()).any())
        if num_new_tokens == 0 and not has_infill:
            raise ValueError(
                "nothing to generate: set `max_new_tokens` (or `max_length`), or put mask tokens "
                f"(id {config.mask_token_id}) in the input to infill them."
            )
        if input_ids.shape[1] + num_new_tokens > max_positions:
            raise ValueError(
                f"the prompt ({input_ids.shape[1]} columns, left padding included) plus {num_new_tokens} new "
                f"tokens is {input_ids.shape[1] + num_new_tokens} positions, more than the model accepts "
                f"(max_position_embeddings={max_positions}); lower `max_new_tokens` / `max_length`."
            )
        return num_new_tokens

    @staticmethod
    def _logits_processor(
        config: LoMDMGenerationConfig, logits_processor: LogitsProcessorList | None
    ) -> LogitsProcessorList:
        """User processors first, then temperature, top-k and top-p (transformers' order)."""
        processors = LogitsProcessorList(logits_processor or [])
        if config.temperature not in (0, 1):  # 0 is greedy: `LoMDMSampler` takes the argmax
            processors.append(TemperatureLogitsWarper(float(config.temperature)))
        if config.top_k is not None:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
        return processors

    def _denoise(
        self, sampler: LoMDMSampler, state: LoMDMSamplerState, rows: torch.LongTensor, output_exponents: bool
    ) -> None:
        """One backbone pass on the canvas rows `rows` `(R,)`; noise_mask = the set M, as in training."""
        timesteps = sampler.timesteps(state)[rows].float() if self.is_time_conditioned else None
        out = self(
            state.canvas[rows],
            attention_mask=state.attention_mask[rows],
            noise_mask=state.generated[rows],
            timesteps=timesteps,
            output_exponents=output_exponents,
        )
        sampler.record_pass(state, rows, out.logits, out.reverse_exponents)  # (R, L, V), (R, L)

    @staticmethod
    def _stream_prompt(streamer: BaseStreamer, state: LoMDMSamplerState) -> None:
        """The first `put` is the prompt (the real tokens before the first generated position), as in HF."""
        length = state.canvas.shape[1]
        first_real = length - state.num_real[0]
        generated = state.generated[0].nonzero()
        state.streamed = int(generated[0]) if generated.numel() else length
        streamer.put(state.canvas[:, first_real : state.streamed].cpu())

    @staticmethod
    def _stream_known(
        streamer: BaseStreamer, state: LoMDMSamplerState, mask_token_id: int, eos_token_id: list[int] | None
    ) -> None:
        """Put the run of known tokens after the last streamed one; stop for good after a generated EOS."""
        length = state.canvas.shape[1]
        tail = state.canvas[0, state.streamed :]
        count = int((tail != mask_token_id).long().cumprod(0).sum())  # leading run of known tokens
        run, end = tail[:count], state.streamed + count
        if eos_token_id is not None:
            is_eos = torch.isin(run, torch.tensor(eos_token_id, device=run.device))
            is_eos &= state.generated[0, state.streamed : end]
            if bool(is_eos.any()):
                run, end = (
                    run[: int(is_eos.nonzero()[0]) + 1],
                    length,
                )  # nothing after the EOS is ever streamed
        if run.numel():
            streamer.put(run.cpu())
        state.streamed = end


__all__ = [
    "DREAM_ALGORITHMS",
    "ORDERS",
    "LoMDMGenerateOutput",
    "LoMDMGenerationConfig",
    "LoMDMGenerationMixin",
    "LoMDMSampler",
    "LoMDMSamplerState",
    "sample_categorical",
]
