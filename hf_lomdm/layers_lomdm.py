"""The transformer building blocks of the LoMDM backbone and schedulers (Llama's layout, bidirectional).

RMSNorm, rotary position embeddings computed from `position_ids`, grouped-query attention through transformers'
`ALL_ATTENTION_FUNCTIONS` (eager or SDPA, `is_causal=False`, a bool key mask) with an optional `Cache` of
keys / values, the SwiGLU MLP, the pre-norm layer (a `GradientCheckpointingLayer`) and the sinusoidal time
embedding of `time_conditioning`. Module names follow Llama's (`q_proj` ... `down_proj`), so Llama checkpoints
and LoRA recipes map onto them one to one. `modeling_lomdm.py` assembles them into the model.

Shapes: B = batch, L = sequence length, H = hidden size, D = head dim.

Hub-facing: every `*_lomdm.py` module ships inside saved checkpoints (transformers copies a model file's
single-dot sibling imports for `trust_remote_code`), so this one imports only `torch`, `transformers` and
`*_lomdm.py` siblings.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_lomdm import LoMDMConfig


class LoMDMRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()  # the variance is computed in float32 (bf16 loses the mean)
        hidden_states = hidden_states * torch.rsqrt(
            hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon
        )
        return self.weight * hidden_states.to(input_dtype)


class LoMDMRotaryEmbedding(nn.Module):
    """RoPE computed from `position_ids` on the fly (no cached buffer that could go stale across devices)."""

    def __init__(self, config: LoMDMConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = (
            torch.arange(0, self.head_dim, 2, device=position_ids.device, dtype=torch.float32) / self.head_dim
        )
        inv_freq = 1.0 / (self.rope_theta**exponent)  # (D/2,)
        freqs = position_ids.float()[..., None] * inv_freq  # (B, L, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, L, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(hidden_states: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, kv_heads, L, D) -> (B, kv_heads * groups, L, D): each key/value head serves `groups` query heads."""
    if groups == 1:
        return hidden_states
    return hidden_states.repeat_interleave(groups, dim=1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, L, D): broadcast over heads
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with a bool mask broadcastable to `(B, 1, L, L)` (True = attend): a `(B, 1, 1, L)` key mask
    (bidirectional) or a full `(B, 1, L, L)` mask given by the caller."""
    key = repeat_kv(key, module.num_key_value_groups)  # grouped-query attention: (B, heads, L, D)
    value = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, heads, L, L)
    if attention_mask is not None:
        attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, L, heads, D)
    return attn_output, attn_weights


class LoMDMAttention(nn.Module):
    """Bidirectional RoPE attention. With `past_key_values` (a transformers `Cache`), the keys / values of the
    positions computed now go through `past_key_values.update(key, value, layer_idx)`, which returns the keys /
    values to attend to (e.g. cached ones of other positions around them; see `cache_lomdm.LoMDMBlockCache`)."""

    def __init__(self, config: LoMDMConfig, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads  # read by transformers' SDPA
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.dropout
        self.is_causal = False
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)

    def forward(self, hidden_states, attention_mask, position_embeddings, past_key_values=None):
        batch, length, _ = hidden_states.shape
        query = (
            self.q_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        )  # (B, heads, L, D)
        key = (
            self.k_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        )  # (B, kv_heads, L, D)
        value = self.v_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)  # (B, kv_heads, L_keys, D)

        attention_interface = eager_attention_forward
        if self.config._attn_implementation not in (None, "eager"):
            attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        return self.o_proj(attn_output.reshape(batch, length, -1))


class LoMDMMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LoMDMLayer(GradientCheckpointingLayer):
    """Pre-norm bidirectional transformer layer (RMSNorm, RoPE attention, SwiGLU)."""

    def __init__(self, config: LoMDMConfig, intermediate_size: int, layer_idx: int | None = None):
        super().__init__()
        self.self_attn = LoMDMAttention(config, layer_idx)
        self.mlp = LoMDMMLP(config.hidden_size, intermediate_size)
        self.input_layernorm = LoMDMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LoMDMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None):
        attn = self.self_attn(
            self.input_layernorm(hidden_states), attention_mask, position_embeddings, past_key_values
        )
        hidden_states = hidden_states + self.dropout(attn)
        mlp = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.dropout(mlp)


class LoMDMTimeEmbedding(nn.Module):
    """Sinusoidal embedding of t in [0, 1] followed by an MLP; used only when `time_conditioning=True`."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.linear_1 = nn.Linear(hidden_size, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        half = self.hidden_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=timesteps.device) / half)
        args = 1000.0 * timesteps.float()[:, None] * freqs  # (B, H/2); t scaled to the usual [0, 1000] range
        emb = torch.cat([args.cos(), args.sin()], dim=-1)
        if emb.shape[-1] < self.hidden_size:  # odd hidden size
            emb = F.pad(emb, (0, 1))
        return self.linear_2(F.silu(self.linear_1(emb.to(dtype))))  # (B, H)


__all__ = [
    "LoMDMAttention",
    "LoMDMLayer",
    "LoMDMMLP",
    "LoMDMRMSNorm",
    "LoMDMRotaryEmbedding",
    "LoMDMTimeEmbedding",
    "apply_rotary_pos_emb",
    "eager_attention_forward",
    "repeat_kv",
    "rotate_half",
]
