"""The LoMDM sampler: the reverse process on a fixed canvas, as a state machine that owns its state.

Hub-facing: this file ships inside checkpoints (trust_remote_code), so it imports only torch, transformers and
its `*_lomdm.py` siblings, through single-dot imports (`from .x import y`): transformers copies exactly those
into a saved folder.

Shapes: B = batch, L = canvas length (left-padded prompt + new tokens), V = vocabulary, K = number of positions
sampled in one step.

The canvas z holds the prompt, the mask tokens appended to it and any mask token already in the input
(infilling). The positions to fill are the set M of the objective (`noise_mask`), fixed for the whole call. After a
backbone pass on z (log p_θ(· | z), SUBS log-probabilities, and the reverse exponents ê(z)), `LoMDMSampler.step`
asks the reveal rule of `order` (`reveal_lomdm.REVEAL_RULES`, built once) which masked positions to reveal and
writes them. The rules return what they reveal; only the sampler writes its state ([`LoMDMSamplerState`]).

Revealed and prompt tokens never change. The sampler never calls the model: `generate` runs the backbone and
hands its output to `step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from .reveal_lomdm import REVEAL_OPTIONS, RevealContext, build_reveal_rule

if TYPE_CHECKING:  # for annotations only: the config module imports the reveal rules, never this module
    from .generation_config_lomdm import LoMDMGenerationConfig


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
    """What a [`LoMDMSampler`] carries between the steps of one `generate` call. Only the sampler writes it."""

    canvas: torch.LongTensor  # (B, L) z: the mask token where a position is still to be revealed
    attention_mask: torch.LongTensor  # (B, L) 1 = real token, 0 = left padding
    generated: torch.BoolTensor  # (B, L) the set M: positions being generated, revealed or not
    blocks: list[tuple[int, int]]  # semi-AR blocks as column ranges [start, end)
    steps_per_block: int | None
    num_real: list[int]  # real tokens per row: per-row random draws cover exactly these
    reveal_pass: torch.LongTensor  # (B, L) index of the pass that revealed each position, -1 elsewhere
    nfe: torch.LongTensor  # (B,) backbone passes per row
    computed_positions: torch.LongTensor  # (B,) positions the backbone computed per row, over all its passes
    stale: torch.BoolTensor  # (B,) the canvas changed since the row's last pass
    finished: torch.BoolTensor  # (B,) rows stopped by EOS or stopping criteria
    block_index: int = 0  # the current block
    active: torch.BoolTensor | None = None  # (B, L) generated positions of the current block
    block_total: torch.LongTensor | None = None  # (B,) masked positions of the block when it began
    log_t: torch.Tensor | None = None  # (B,) float64 current time of each row (first-hitting sampler)
    step_index: int = 0  # steps taken in the current block
    log_probs: torch.Tensor | None = None  # (B, L, V) float32 cached log p_θ of each row's last pass
    reverse_exponents: torch.Tensor | None = None  # (B, L) cached ê of each row's last pass


# -- the sampler ---------------------------------------------------------------------------------------------


class LoMDMSampler:
    """The reverse process on a fixed canvas. It owns its state ([`LoMDMSamplerState`]) and never
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
        self.rule = build_reveal_rule(
            generation_config.order, {name: getattr(generation_config, name) for name in REVEAL_OPTIONS}
        )
        self.steps = generation_config.steps
        self.block_length = generation_config.block_length
        self.greedy = generation_config.greedy
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
    def computed_positions(self) -> torch.LongTensor:
        """`(B,)` positions the backbone computed for each row, over all its passes (L per full pass)."""
        return self.state.computed_positions

    @property
    def position_ids(self) -> torch.LongTensor:
        """`(B, L)` position of each column counted from its row's first real token (0 on left padding)."""
        state = self.state
        length = state.canvas.shape[1]
        num_real = torch.tensor(state.num_real, device=state.canvas.device)  # (B,)
        # Left padding: the real tokens are the last n_b columns, so column j is position j - (L - n_b).
        return (torch.arange(length, device=state.canvas.device) - (length - num_real)[:, None]).clamp(min=0)

    @property
    def block(self) -> tuple[int, int]:
        """The columns `[start, end)` of the current block."""
        return self.state.blocks[self.state.block_index]

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
        if self.block_length is None:
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
            computed_positions=torch.zeros(batch, dtype=torch.long, device=canvas.device),
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
        return self.rule.timesteps(self._context())

    def step(
        self,
        log_probs: torch.Tensor | None = None,
        reverse_exponents: torch.Tensor | None = None,
        rows: torch.LongTensor | None = None,
        computed_positions: int | None = None,
    ) -> torch.BoolTensor:
        """Reveal tokens; returns the `(B, L)` positions revealed.

        Args:
            log_probs (`torch.Tensor` of shape `(R, L, V)`, *optional*): log p_θ of a backbone pass on the canvas
                rows `rows`; the other rows reuse their last pass. `None`: every row reuses its last pass.
            reverse_exponents (`torch.Tensor` of shape `(R, L)`, *optional*): ê of that pass; needed when
                `needs_exponents`.
            rows (`torch.LongTensor` of shape `(R,)`, *optional*): The rows of the pass (default: all rows).
            computed_positions (`int`, *optional*): Positions per row the pass computed (default: L, a full
                pass; fewer for a cached pass).

        The tokens come from log p_θ after the logits processors, sampled in float64. Each position records
        the index of the pass it was revealed from.
        """
        state = self.state
        if log_probs is not None:
            if rows is None:
                rows = torch.arange(state.canvas.shape[0], device=state.canvas.device)
            self._record_pass(rows, log_probs, reverse_exponents)
            state.computed_positions[rows] += (
                state.canvas.shape[1] if computed_positions is None else computed_positions
            )
        masked = self.masked()  # (B, L)
        u = self._uniform(masked.any(-1))  # (B, L, 2): reveal decision, token draw
        revealed = self.rule.reveal(self._context(masked), u, self._sample)
        reveal = revealed.positions
        state.canvas[reveal] = revealed.tokens
        if revealed.log_t is not None:
            state.log_t = revealed.log_t
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

    def _context(self, masked: torch.BoolTensor | None = None) -> RevealContext:
        """What the reveal rule reads at this step (`masked` `(B, L)`: the current block's masked positions)."""
        state = self.state
        return RevealContext(
            masked=self.masked() if masked is None else masked,
            log_t=state.log_t,
            step_index=state.step_index,
            num_steps=state.steps_per_block,
            block_total=state.block_total,
            reverse_exponents=state.reverse_exponents,
        )

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
        batch = state.canvas.shape[0]
        device = state.canvas.device
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
        # Padding columns read position 0; they are never masked, so their draws are never used.
        return 1.0 - drawn.gather(1, self.position_ids[..., None].expand(-1, -1, 2))  # (B, L, 2)

    def _sample(self, positions: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `(K,)` and float64 probabilities `(K, V)` at the K `positions` `(B, L)` (row-major), drawn
        with `u` `(B, L)` from the processed log p_θ (the argmax when greedy)."""
        rows, columns = positions.nonzero(as_tuple=True)
        scores = self.logits_processor(self.state.canvas[rows], self.state.log_probs[rows, columns])  # (K, V)
        probs = torch.softmax(scores.double(), dim=-1)
        tokens = probs.argmax(-1) if self.greedy else sample_categorical(scores, u[rows, columns], probs)
        return tokens, probs


__all__ = ["LoMDMSampler", "LoMDMSamplerState", "sample_categorical"]
