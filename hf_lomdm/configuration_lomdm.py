"""LoMDM model configuration (what `config.json` holds; sampling settings live in `generation_config.json`).

Hub-facing: every `*_lomdm.py` module ships inside saved checkpoints (transformers copies a model file's
single-dot sibling imports for `trust_remote_code`), so this one imports only `torch`, `transformers` and
`*_lomdm.py` siblings. The schedule kinds are declared in `schedule_lomdm.SCHEDULES`; the config validates
against that registry.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig

from .schedule_lomdm import SCHEDULES


class LoMDMConfig(PreTrainedConfig):
    r"""
    Configuration of a learned-order masked diffusion LM (LoMDM, arXiv 2602.02112).

    Every schedule has the exponent form `alpha^i(t) = 1 - t**e_i` (see `schedule_lomdm.py`).

    Args:
        vocab_size (`int`): Number of token ids, the mask token included.
        hidden_size (`int`): Width of the backbone.
        num_hidden_layers (`int`): Number of bidirectional transformer layers.
        num_attention_heads (`int`): Attention heads per layer; must divide `hidden_size`.
        num_key_value_heads (`int`, *optional*): Key/value heads (grouped-query attention); must divide
            `num_attention_heads`. Defaults to `num_attention_heads` (multi-head attention).
        intermediate_size (`int`): Width of the SwiGLU feed-forward block.
        max_position_embeddings (`int`): Longest sequence the model (and the per-position schedule) accepts.
        rope_theta (`float`): RoPE base.
        rms_norm_eps (`float`): RMSNorm epsilon.
        attention_bias (`bool`): Bias on the q/k/v/o projections (as Llama's `attention_bias`).
        dropout (`float`): Dropout on attention probabilities and residual branches.
        initializer_range (`float`): Std of the normal weight initialisation.
        mask_token_id (`int`): Id of the mask token `m` (never a target; its log-probability is -inf).
        pad_token_id, bos_token_id, eos_token_id (`int`, *optional*): Special token ids.
        schedule (`str`): One of `linear` (MDLM), `polynomial` (fixed `e = c1`), `per_position`
            (MDM(LS), learned per position) or `lomdm` (learned, state dependent).
        c1, c2 (`float`): Exponent range `e = c1 + c2 * NormSig(.)`; requires `c1 > c2 >= 0`.
            `polynomial` uses `e = c1`; `linear` ignores both.
        scheduler_intermediate_size (`int`, *optional*): Feed-forward width of the scheduler block
            (defaults to `intermediate_size`).
        scheduler_head_size (`int`, *optional*): Hidden width of the scheduler's scalar MLP head
            (defaults to `hidden_size`).
        time_conditioning (`bool`): Condition the backbone on `t`. Off by default (MDLM, LoMDM): a
            time-independent backbone is what makes cached sampling exact.
        shift (`bool`): Read the prediction for position i from the hidden state at i - 1 (position 0 reads
            its own), as a causal LM does; set by `LoMDMForMaskedDiffusion.from_causal_lm` so a converted
            model starts from the source model's next-token head. Exponents are not shifted.
        tie_word_embeddings (`bool`): Tie the output projection to the input embeddings.
    """

    model_type = "lomdm"

    def __init__(
        self,
        vocab_size: int = 32768,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_key_value_heads: int | None = None,
        intermediate_size: int = 2048,
        max_position_embeddings: int = 1024,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        attention_bias: bool = False,
        dropout: float = 0.0,
        initializer_range: float = 0.02,
        mask_token_id: int = 0,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        schedule: str = "lomdm",
        c1: float = 0.7,
        c2: float = 0.65,
        scheduler_intermediate_size: int | None = None,
        scheduler_head_size: int | None = None,
        time_conditioning: bool = False,
        shift: bool = False,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.attention_bias = attention_bias
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.mask_token_id = mask_token_id
        self.schedule = schedule
        self.c1 = c1
        self.c2 = c2
        self.scheduler_intermediate_size = scheduler_intermediate_size or intermediate_size
        self.scheduler_head_size = scheduler_head_size or hidden_size
        self.time_conditioning = time_conditioning
        self.shift = shift
        self._validate_lomdm(pad_token_id, bos_token_id, eos_token_id)
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def _validate_lomdm(self, *special_ids: int | None) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "max_position_embeddings",
            "scheduler_intermediate_size",
            "scheduler_head_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of `num_key_value_heads` "
                f"({self.num_key_value_heads})."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head dimension, got {self.head_dim}.")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {tuple(SCHEDULES)}, got {self.schedule!r}.")
        if self.c1 <= 0 or self.c2 < 0:
            raise ValueError(f"`c1` must be > 0 and `c2` >= 0, got c1={self.c1!r}, c2={self.c2!r}.")
        if self.c1 <= self.c2:
            # Exponents are c1 + c2 * NormSig with NormSig in (-1, 1): c1 > c2 keeps every exponent > 0.
            raise ValueError(
                f"`c1` must be > `c2` so every exponent stays positive, got c1={self.c1}, c2={self.c2}."
            )
        if not isinstance(self.mask_token_id, int) or not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(
                f"`mask_token_id` must be in [0, vocab_size={self.vocab_size}), got {self.mask_token_id!r}."
            )
        for token_id in special_ids:
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise ValueError(f"special token id {token_id} is outside [0, vocab_size={self.vocab_size}).")
            if token_id is not None and token_id == self.mask_token_id:
                raise ValueError(
                    f"special token id {token_id} equals `mask_token_id`; the mask token must be unique."
                )


def check_token_id_tensor(input_ids, name: str) -> None:
    """ValueError naming `name` unless `input_ids` is a 2-D integer tensor (the model's and `generate`'s check)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(
            f"`{name}` must be a (batch, length) tensor, got {type(input_ids).__name__} "
            f"of shape {getattr(input_ids, 'shape', None)}."
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"`{name}` must hold integer token ids, got dtype {input_ids.dtype}.")


def check_model_inputs(
    input_ids, attention_mask, noise_mask, timesteps, vocab_size: int, max_length: int
) -> None:
    """ValueError naming the problem for the model's inputs: token ids, their range and length, mask shapes."""
    check_token_id_tensor(input_ids, "input_ids")
    if input_ids.shape[1] > max_length:
        raise ValueError(
            f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings={max_length}."
        )
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, vocab_size={vocab_size}), got values in "
            f"[{int(input_ids.min())}, {int(input_ids.max())}]."
        )
    for name, mask in (("attention_mask", attention_mask), ("noise_mask", noise_mask)):
        if mask is not None and mask.shape != input_ids.shape:
            raise ValueError(
                f"`{name}` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                f"got {tuple(mask.shape)}."
            )
    if timesteps is not None and timesteps.shape != input_ids.shape[:1]:
        raise ValueError(
            f"`timesteps` must have shape ({input_ids.shape[0]},), got {tuple(timesteps.shape)}."
        )


def check_allowed_tokens(allowed_tokens, shape, vocab_size: int, mask_token_id: int) -> None:
    """ValueError unless `allowed_tokens` is None or a bool `(L, V)` / `(B, L, V)` mask allowing each position one
    token besides the mask token."""
    if allowed_tokens is None:
        return
    if allowed_tokens.dtype != torch.bool or allowed_tokens.shape not in (
        (*shape[1:], vocab_size),
        (*shape, vocab_size),
    ):
        raise ValueError(
            f"`allowed_tokens` must be a bool tensor of shape ({shape[1]}, {vocab_size}) or "
            f"({shape[0]}, {shape[1]}, {vocab_size}), got {allowed_tokens.dtype} of shape "
            f"{tuple(allowed_tokens.shape)}."
        )
    # Count per position without copying the (.., L, V) mask: this check runs on every forward.
    if not bool((allowed_tokens.sum(-1) > allowed_tokens[..., mask_token_id]).all()):
        raise ValueError("`allowed_tokens` leaves a position with no allowed token besides the mask token.")


__all__ = ["SCHEDULES", "LoMDMConfig", "check_allowed_tokens", "check_model_inputs", "check_token_id_tensor"]
