"""LoMDM backbone, learned schedulers and the masked-diffusion head.

Shapes: B = batch, L = sequence length, H = hidden size, V = vocabulary, D = head dim.

`LoMDMForMaskedDiffusion.forward` returns the SUBS log-probabilities of the denoiser (arXiv 2406.07524
§3.2: the mask token gets probability 0, unmasked tokens are copied) and the reverse exponents ê; the
forward exponents e come from `forward_exponents`. The loss is not computed here (it lives in
`hf_lomdm.objective`), but a training step is one call: `forward(x, noise=spec)` computes e(x), draws the K noisy
samples from it with `schedule_lomdm.add_noise` (the random numbers `spec` come from `schedule_lomdm.sample_noise`),
runs the denoiser on all of them in one batch with the head only at masked positions, and returns the draw on its
output (`noise_draw`), so DDP, FSDP, PEFT and autocast wrappers see a single module call.

Which schedule kind builds which modules, and how its scores become exponents, is declared once in
`schedule_lomdm.SCHEDULES`; this file asks that registry.

Hub-facing: every `*_lomdm.py` module ships inside saved checkpoints (transformers copies a model file's
single-dot sibling imports for `trust_remote_code`), so this one imports only `torch`, `transformers` and
`*_lomdm.py` siblings; the objective, trainer and data code are ordinary package modules it never imports.

SUBS and the shift option. Let h_j = f(z)_j be the backbone's last hidden state at position j and
r_i = h_i (default) or r_i = h_{i-1} (`config.shift`, r_0 = h_0). The denoiser's distribution for position i is
p_θ^i(· | z) = softmax(W r_i) with the mask token's logit set to -inf (zero-masking) where z_i is the mask token,
and the one-hot of z_i where it is not (carry-over). With the shift, a model converted from a causal LM
(`from_causal_lm`) starts from that model's next-token head: run with a causal mask it reproduces the source
model's log-probabilities exactly (tested). The exponents are never shifted: e_i and ê_i belong to token i, and
the schedulers read all of f(·) bidirectionally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import Cache, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from .configuration_lomdm import LoMDMConfig, check_allowed_tokens, check_model_inputs
from .generation_config_lomdm import LoMDMGenerationConfig
from .generation_lomdm import LoMDMGenerationMixin
from .layers_lomdm import LoMDMLayer, LoMDMRMSNorm, LoMDMRotaryEmbedding, LoMDMTimeEmbedding
from .schedule_lomdm import SCHEDULES, NoiseDraw, NoiseSpec, add_noise


class LoMDMScoreProjection(nn.Linear):
    """Last layer of a scheduler; zero-initialised (see `LoMDMPreTrainedModel._init_weights`)."""


class LoMDMPositionScores(nn.Module):
    """θ of the `per_position` schedule (MDM(LS)): one learned score per position, zero-initialised.

    A module rather than a bare parameter so that PEFT can list it in `modules_to_save`.
    """

    def __init__(self, max_positions: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_positions))

    def forward(self, position_ids: torch.LongTensor) -> torch.Tensor:
        return self.weight[position_ids]  # (B, L)


class LoMDMScheduler(nn.Module):
    """A learned scheduler g (LoMDM §4): one bidirectional layer + an MLP to one score per position.

    It reads stop-gradient backbone features, so its gradient never reaches the backbone. The last
    projection starts at zero: every scheduler starts as the polynomial schedule e = c1.
    """

    def __init__(self, config: LoMDMConfig):
        super().__init__()
        self.layer = LoMDMLayer(config, config.scheduler_intermediate_size)
        self.norm = LoMDMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.head_proj = nn.Linear(config.hidden_size, config.scheduler_head_size)
        self.score_proj = LoMDMScoreProjection(config.scheduler_head_size, 1)

    def forward(self, features, attention_mask, position_embeddings) -> torch.Tensor:
        hidden = self.norm(self.layer(features.detach(), attention_mask, position_embeddings))
        return self.score_proj(F.silu(self.head_proj(hidden))).squeeze(-1).float()  # (B, L)


@dataclass
class LoMDMOutput(ModelOutput):
    """
    Args:
        logits (`torch.FloatTensor` of shape `(B, L, V)`): float32 SUBS **log-probabilities** (normalised, not raw
            logits; named `logits` for transformers' pipelines and tools, to which they act the same under a
            softmax): -inf at the mask token; one-hot (0 / -inf) at unmasked input positions. `None` when
            `logits_mask` is given: the log-probabilities are then in `packed_log_probs`.
        packed_log_probs (`torch.FloatTensor` of shape `(N, V)`, *optional*): the same log-probabilities at the
            `N = logits_mask.sum()` positions of `logits_mask` only, in row-major order (with `noise`: at the
            masked positions of the `(K B, L)` noisy batch).
        reverse_exponents (`torch.FloatTensor` of shape `(B, L)`): ê of the reverse process (= e for
            state-independent schedules); `None` if `output_exponents=False`.
        last_hidden_state (`torch.FloatTensor` of shape `(B, L, H)`): backbone features f(z).
        hidden_states (`tuple`, *optional*): per-layer hidden states if requested.
        forward_exponents (`torch.FloatTensor` of shape `(B, L)`, *optional*): e of the clean input (with
            `noise`); carries the forward scheduler's gradient.
        forward_scores (`torch.FloatTensor` of shape `(B, L)`, *optional*): the raw scores v behind e (with
            `noise`, `None` for the fixed schedules).
        noise_draw (`NoiseDraw`, *optional*): with `noise`, what the forward process drew (times, importance
            weights, the `(K, B, L)` mask of masked positions).
    """

    logits: torch.FloatTensor | None = None
    packed_log_probs: torch.FloatTensor | None = None
    reverse_exponents: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    forward_exponents: torch.FloatTensor | None = None
    forward_scores: torch.FloatTensor | None = None
    noise_draw: NoiseDraw | None = None


class LoMDMPreTrainedModel(PreTrainedModel):
    config_class = LoMDMConfig
    config: LoMDMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LoMDMLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def _init_weights(self, module):
        if isinstance(module, LoMDMScoreProjection):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LoMDMPositionScores):
            init.zeros_(module.weight)
        else:
            super()._init_weights(module)


def _bidirectional_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) 0/1 padding mask -> bool (B, 1, 1, L) key mask, or None when nothing is padded.

    A row with no real token attends everywhere instead of nowhere, so no query row is ever fully
    masked (a fully masked softmax row is how padded batches turn into NaN). A bool `(B, 1, L, L)` mask
    (e.g. causal) given to the backbone is used as it is.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.bool()
    if attention_mask is None or bool(attention_mask.all()):
        return None
    keys = attention_mask.bool()
    keys = keys | ~keys.any(-1, keepdim=True)
    return keys[:, None, None, :]


def _position_ids(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
    """Positions count from each row's first real token, so left padding changes nothing."""
    if attention_mask is None or attention_mask.dim() == 4:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _default_noise_mask(noise_mask, attention_mask, input_ids) -> torch.Tensor:
    if noise_mask is not None:
        return noise_mask.bool()
    if attention_mask is not None:
        return attention_mask.bool()
    return torch.ones_like(input_ids, dtype=torch.bool)


class LoMDMModel(LoMDMPreTrainedModel):
    """The bidirectional transformer backbone; returns the final normalised hidden states f(z).

    `attention_mask` is a `(B, L)` padding mask, or a bool `(B, 1, L, L)` mask (True = attend) used as given;
    with the latter, positions count from 0 unless `position_ids` are passed. With `past_key_values` (a
    transformers `Cache` that every layer's attention updates), `input_ids` are the positions computed now,
    `attention_mask` `(B, L_keys)` covers the keys the cache returns (in their order) and `position_ids` are required.
    """

    def __init__(self, config: LoMDMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.time_embedding = LoMDMTimeEmbedding(config.hidden_size) if config.time_conditioning else None
        self.layers = nn.ModuleList(
            [LoMDMLayer(config, config.intermediate_size, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = LoMDMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LoMDMRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        timesteps: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        if (timesteps is None) == (self.time_embedding is not None):
            raise ValueError(
                "`timesteps` must be given exactly when the model is time-conditioned "
                f"(time_conditioning={self.time_embedding is not None}, timesteps given: {timesteps is not None})."
            )
        if position_ids is None:
            if past_key_values is not None:
                raise ValueError("`past_key_values` needs `position_ids` for the positions computed now.")
            position_ids = _position_ids(attention_mask, input_ids)
        hidden_states = self.embed_tokens(input_ids)  # (B, L, H)
        if self.time_embedding is not None:
            hidden_states = hidden_states + self.time_embedding(timesteps, hidden_states.dtype)[:, None, :]
        position_embeddings = self.rotary_emb(position_ids, hidden_states.dtype)
        mask = _bidirectional_mask(attention_mask)
        all_hidden = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, position_embeddings, past_key_values=past_key_values)
            if output_hidden_states:
                all_hidden += (hidden_states,)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden)


def shift_right(features: torch.Tensor) -> torch.Tensor:
    """`config.shift`: the features that predict position i are those of i - 1; position 0 keeps its own."""
    return torch.cat([features[:, :1], features[:, :-1]], dim=1)


def subs_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """SUBS parameterisation (MDLM §3.2): zero-masking and carry-over, as float32 log-probabilities."""
    logits = logits.float()  # softmax in float32: bf16 log-probs lose ~2 digits
    logits[..., mask_token_id] = -math.inf
    log_probs = F.log_softmax(logits, dim=-1)  # (B, L, V)
    carry = torch.full_like(log_probs, -math.inf).scatter(-1, input_ids[..., None], 0.0)
    unmasked = (input_ids != mask_token_id)[..., None]
    return torch.where(unmasked, carry, log_probs)


class LoMDMForMaskedDiffusion(LoMDMPreTrainedModel, LoMDMGenerationMixin):
    """LoMDM: backbone + output head + (schedule `lomdm`) the forward scheduler g_φ and reverse scheduler g_ψ,
    or (schedule `per_position`) one learned score θ_ℓ per position.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    generation_config_class = LoMDMGenerationConfig

    def __init__(self, config: LoMDMConfig):
        super().__init__(config)
        self.model = LoMDMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # The learned-schedule modules the schedule kind declares (the others stay None).
        self.schedule_kind = SCHEDULES[config.schedule]
        builders = {
            "forward_scheduler": lambda: LoMDMScheduler(config),
            "reverse_scheduler": lambda: LoMDMScheduler(config),
            "position_scores": lambda: LoMDMPositionScores(config.max_position_embeddings),
        }
        for name, build in builders.items():
            setattr(self, name, build() if name in self.schedule_kind.learned_modules else None)
        # Read once here; forward never reads self.config.
        self.schedule = config.schedule
        self.shift = config.shift
        self.c1, self.c2 = config.c1, config.c2
        self.mask_token_id = config.mask_token_id
        self.vocab_size = config.vocab_size
        self.max_length = config.max_position_embeddings
        self.post_init()

    @classmethod
    def from_causal_lm(
        cls, model_or_path, schedule: str = "lomdm", shift: bool = True, **config_overrides
    ) -> LoMDMForMaskedDiffusion:
        r"""A LoMDM whose backbone carries a causal LM's weights one to one (Llama and Qwen2 layouts).

        Args:
            model_or_path (`PreTrainedModel` or `str`): the causal LM, or a folder / Hub id to load it from.
            schedule (`str`): the LoMDM schedule; the new schedulers start as e = c1.
            shift (`bool`): read the prediction for position i from the hidden state at i - 1 (see the module
                docstring), so the model starts from the source model's next-token head.
            config_overrides: `tokenizer`, `dtype` and other `LoMDMConfig` fields; see
                `conversion_lomdm.from_causal_lm`, which documents each.
        """
        from .conversion_lomdm import from_causal_lm

        return from_causal_lm(cls, model_or_path, schedule, shift, **config_overrides)

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=checkpoint, every_n_layers: int = 1
    ) -> None:
        """transformers' switch, except that reentrant checkpointing leaves the scheduler blocks alone: a reentrant
        checkpoint whose inputs need no gradient returns none to its parameters, and the schedulers read
        stop-gradient features (their gradient would silently be zero). Non-reentrant checkpointing (transformers'
        default) checkpoints them like the backbone layers."""
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers)
        keywords = getattr(gradient_checkpointing_func, "keywords", {})
        if enable and keywords.get("use_reentrant") is not False:  # torch's default is reentrant
            for scheduler in (self.forward_scheduler, self.reverse_scheduler):
                if scheduler is not None:
                    scheduler.layer.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @property
    def is_time_conditioned(self) -> bool:
        return self.model.time_embedding is not None

    def _check_inputs(self, input_ids, attention_mask, noise_mask, timesteps) -> None:
        check_model_inputs(input_ids, attention_mask, noise_mask, timesteps, self.vocab_size, self.max_length)

    def _scores(self, scheduler, features, position_ids, key_mask) -> torch.Tensor | None:
        """Raw scores v of one direction (None for the fixed schedules); `scheduler` is g_φ or g_ψ for `lomdm`."""
        source = self.schedule_kind.scores
        if source == "none":
            return None
        if source == "position":
            return self.position_scores(position_ids)  # (B, L)
        position_embeddings = self.model.rotary_emb(position_ids, features.dtype)
        return scheduler(features, _bidirectional_mask(key_mask), position_embeddings)

    def _exponents(self, scores: torch.Tensor | None, noise_mask: torch.Tensor) -> torch.Tensor:
        """Exponents e (or ê) `(B, L)` from the raw scores, as the schedule kind declares them."""
        return self.schedule_kind.exponents(scores, noise_mask, self.c1, self.c2)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        noise_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        timesteps: torch.Tensor | None = None,
        output_exponents: bool = True,
        output_hidden_states: bool = False,
        logits_mask: torch.Tensor | None = None,
        allowed_tokens: torch.Tensor | None = None,
        noise: NoiseSpec | None = None,
        past_key_values: Cache | None = None,
        labels: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> LoMDMOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(B, L)`): the noisy sequence z_t (mask token = masked).
            attention_mask (`torch.Tensor` of shape `(B, L)`, *optional*): 1 for real tokens, 0 for padding.
            noise_mask (`torch.Tensor` of shape `(B, L)`, *optional*): the set M (positions that may be
                noised / generated); NormSig is taken over it. Defaults to `attention_mask`.
            position_ids (`torch.LongTensor`, *optional*): defaults to counting from each row's first real token.
            timesteps (`torch.Tensor` of shape `(B,)`, *optional*): t, required iff `time_conditioning`.
            output_exponents (`bool`): also compute the reverse exponents ê (one scheduler block for `lomdm`).
            logits_mask (`torch.BoolTensor` of shape `(B, L)`, *optional*): compute the output head and the
                log-softmax only where True (e.g. the masked positions, the only ones the loss and the sampler
                read); they are then returned as the packed `(N, V)` `packed_log_probs` of those positions in
                row-major order (`N = logits_mask.sum()`) and `logits` is None. The head is the largest single
                matmul of a small model. Default: all.
            allowed_tokens (`torch.BoolTensor` of shape `(L, V)` or `(B, L, V)`, *optional*): the tokens each
                position may take (True = allowed). The denoiser's softmax runs over the allowed set only, so a
                position never puts mass on (or samples) another token: a column-restricted table model, or
                constrained infilling. Each position needs one allowed token besides the mask token.
            noise (`NoiseSpec`, *optional*): the random numbers of one training step (`schedule_lomdm.sample_noise`;
                what `hf_lomdm.objective.lomdm_loss` passes). `input_ids` are then the clean x, and the model
                (1) computes the forward exponents e of x as `forward_exponents` does, (2) draws the times and the K
                noisy samples with `schedule_lomdm.add_noise(noise, e.detach(), noise_mask)`, (3) runs the denoiser
                on all K samples as one `(K B, L)` batch with the head only at masked positions
                (`packed_log_probs`), and returns the draw as `noise_draw`. One module call per step is what DDP,
                FSDP, PEFT and accelerate's autocast wrap.
            past_key_values (`Cache`, *optional*): updated by every layer's attention with the keys / values of
                this pass (generation's block cache, `cache_lomdm.LoMDMBlockCache`, fills itself this way).
            labels: not accepted: raises a `ValueError` that points to the loss. The NELBO is a Monte-Carlo
                estimate over noise draws whose formula lives in `hf_lomdm.objective`, which this file (shipped
                inside checkpoints) does not import; `hf_lomdm.objective.lomdm_loss(model, input_ids, labels=...)`
                or `hf_lomdm.LoMDMTrainer` compute it.
            token_type_ids (`torch.LongTensor`, *optional*): what tokenizers return by default; LoMDM has no
                segment embeddings, so it is ignored.
            return_dict (`bool`, *optional*): `False` returns `LoMDMOutput.to_tuple()` (transformers' convention).
            output_attentions (`bool`, *optional*): only `False` / `None`; LoMDM does not return attention weights.

        Any other keyword is a `TypeError`, as for any Python function: nothing is silently ignored.
        """
        if labels is not None:
            raise ValueError(
                "`forward` does not compute a loss from `labels`: the NELBO is estimated by "
                "`hf_lomdm.objective.lomdm_loss(model, input_ids, labels=labels)` (what `hf_lomdm.LoMDMTrainer` "
                "trains on), or per sequence by `hf_lomdm.objective.stratified_nelbo`."
            )
        if output_attentions:
            raise ValueError(
                "`output_attentions=True` is not supported: LoMDM does not return attention weights."
            )
        check_allowed_tokens(allowed_tokens, input_ids.shape, self.vocab_size, self.mask_token_id)
        if noise is not None:
            out = self._training_forward(
                input_ids, attention_mask, noise_mask, position_ids, noise, allowed_tokens
            )
        else:
            self._check_inputs(input_ids, attention_mask, noise_mask, timesteps)
            if logits_mask is not None and (
                logits_mask.shape != input_ids.shape or logits_mask.dtype != torch.bool
            ):
                raise ValueError(
                    f"`logits_mask` must be a bool tensor of shape {tuple(input_ids.shape)}, got "
                    f"{logits_mask.dtype} of shape {tuple(logits_mask.shape)}."
                )
            out = self._denoiser_pass(
                input_ids,
                attention_mask,
                noise_mask,
                position_ids,
                timesteps,
                output_exponents,
                output_hidden_states,
                logits_mask,
                allowed_tokens,
                past_key_values,
            )
        return out.to_tuple() if return_dict is False else out

    def _denoiser_pass(
        self,
        input_ids,
        attention_mask,
        noise_mask,
        position_ids,
        timesteps,
        output_exponents=True,
        output_hidden_states=False,
        logits_mask=None,
        allowed_tokens=None,
        past_key_values=None,
    ) -> LoMDMOutput:
        """The denoiser pass of `forward` on checked inputs: log p_θ(· | z) (SUBS) and ê(z).

        With `past_key_values` (see `LoMDMModel`), `input_ids` are the positions computed now and `attention_mask`
        covers the keys; ê then needs features of the whole sequence: pass `output_exponents=False` and get ê
        from `_reverse_exponents`.
        """
        if position_ids is None:
            position_ids = _position_ids(attention_mask, input_ids)
        outputs = self.model(
            input_ids,
            attention_mask,
            position_ids,
            timesteps,
            output_hidden_states,
            past_key_values=past_key_values,
        )
        features = outputs.last_hidden_state  # f(z): (B, L, H)
        head_features = shift_right(features) if self.shift else features  # prediction for i read at i - 1
        head_inputs = input_ids
        if allowed_tokens is not None:
            allowed_tokens = allowed_tokens.expand(*input_ids.shape, -1)  # (B, L, V)
        if logits_mask is not None:
            head_features, head_inputs = head_features[logits_mask], input_ids[logits_mask]  # (N, H), (N,)
            allowed_tokens = None if allowed_tokens is None else allowed_tokens[logits_mask]  # (N, V)
        logits = self.lm_head(head_features)
        if allowed_tokens is not None:
            logits = logits.masked_fill(~allowed_tokens, -math.inf)  # the softmax spans the allowed set only
        log_probs = subs_log_probs(logits, head_inputs, self.mask_token_id)  # (B, L, V) / (N, V)
        reverse_exponents = None
        if output_exponents:
            reverse_exponents = self._reverse_exponents(
                features, input_ids, attention_mask, noise_mask, position_ids
            )
        return LoMDMOutput(
            logits=log_probs if logits_mask is None else None,
            packed_log_probs=log_probs if logits_mask is not None else None,
            reverse_exponents=reverse_exponents,
            last_hidden_state=features,
            hidden_states=outputs.hidden_states,
        )

    def _reverse_exponents(
        self, features, input_ids, attention_mask, noise_mask, position_ids
    ) -> torch.Tensor:
        """ê `(B, L)` from the backbone features f(z) `(B, L, H)` of the sequence `input_ids` `(B, L)`."""
        noise_mask = _default_noise_mask(noise_mask, attention_mask, input_ids)
        scores = self._scores(self.reverse_scheduler, features, position_ids, attention_mask)
        return self._exponents(scores, noise_mask)

    def _training_forward(
        self, input_ids, attention_mask, noise_mask, position_ids, noise, allowed_tokens=None
    ) -> LoMDMOutput:
        """`forward(..., noise=spec)`: e of the clean rows, then the K noisy rows in one batch (see `forward`)."""
        e, scores = self.forward_exponents(
            input_ids, attention_mask, noise_mask, position_ids, return_scores=True
        )
        noise_mask = _default_noise_mask(noise_mask, attention_mask, input_ids)
        draw = add_noise(noise, e.detach().float(), noise_mask)
        is_mask = draw.is_mask  # (K, B, L) bool
        num_samples = is_mask.shape[0]

        def tile(tensor):  # (B, ...) -> (K B, ...): sample k of row b is row k B + b
            return None if tensor is None else tensor.repeat(num_samples, *([1] * (tensor.dim() - 1)))

        z_is_mask = is_mask.flatten(0, 1)  # (K B, L)
        z = torch.where(
            z_is_mask, torch.full_like(z_is_mask, self.mask_token_id, dtype=torch.long), tile(input_ids)
        )
        out = self._denoiser_pass(
            z,
            tile(attention_mask),
            tile(noise_mask),
            tile(position_ids),
            tile(draw.t.float()) if self.is_time_conditioned else None,
            logits_mask=z_is_mask,
            allowed_tokens=allowed_tokens
            if allowed_tokens is None or allowed_tokens.dim() == 2
            else tile(allowed_tokens),
        )
        out.forward_exponents, out.forward_scores, out.noise_draw = e, scores, draw
        return out

    def forward_exponents(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        noise_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_scores: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Forward exponents e of the clean sequence x, `(B, L)`; with `return_scores`, also the raw scores v
        (`(B, L)`, None for `linear` / `polynomial`) from which e = c1 + c2 NormSig(v) is computed.

        For `lomdm` this runs the backbone on x without gradient (f(x) is stop-gradient) and g_φ with
        gradient; for the other schedules it needs no backbone pass.
        """
        self._check_inputs(input_ids, attention_mask, noise_mask, None)
        if position_ids is None:
            position_ids = _position_ids(attention_mask, input_ids)
        noise_mask = _default_noise_mask(noise_mask, attention_mask, input_ids)
        features = None
        if self.schedule_kind.scores == "features":  # state-dependent: g_φ reads f(x)
            with torch.no_grad():
                timesteps = (
                    torch.zeros(input_ids.shape[0], device=input_ids.device)
                    if self.is_time_conditioned
                    else None
                )
                features = self.model(input_ids, attention_mask, position_ids, timesteps).last_hidden_state
        scores = self._scores(self.forward_scheduler, features, position_ids, attention_mask)
        e = self._exponents(scores, noise_mask)
        return (e, scores) if return_scores else e


__all__ = ["LoMDMForMaskedDiffusion", "LoMDMModel", "LoMDMOutput", "LoMDMPreTrainedModel", "subs_log_probs"]
