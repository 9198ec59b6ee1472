"""Start a LoMDM from a pretrained causal LM (`LoMDMForMaskedDiffusion.from_causal_lm`).

The backbone uses Llama's layout and module names, so a Llama-family checkpoint maps onto it one to one:
`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`, `model.layers.{i}.mlp.{gate,up,down}_proj`,
the two RMSNorms per layer, `model.norm` and `lm_head` keep their names and values. What changes:

- attention becomes bidirectional (no causal mask), which is what the diffusion denoiser needs;
- a mask token is appended to the vocabulary (one new embedding row, the mean of the others, as
  `resize_token_embeddings` does) unless the tokenizer already has one;
- with `shift=True` (the default, as DiffuLLaMA and Dream) the prediction for position i is read from the hidden
  state at i - 1, so the converted model starts from the source model's next-token head;
- the learned schedulers are new and initialised as the package does (they start as e = c1).

Supported: `llama` (Llama 2/3 without RoPE scaling, SmolLM, TinyLlama, ...) and `qwen2` (its q/k/v biases are
kept; the o-projection gets a zero bias). Anything else, and any config field that would change the maths
(RoPE scaling, sliding windows, another activation, MLP biases, a decoupled head dimension), is a ValueError
naming it, never a silent approximation. Only torch and transformers are imported: the file travels with
checkpoints like the other model files.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .configuration_lomdm import LoMDMConfig

SUPPORTED_CAUSAL_LMS = ("llama", "qwen2")
MASK_TOKEN = "<|mask|>"


def _rope_theta(source_config) -> float:
    parameters = getattr(source_config, "rope_parameters", None) or {}
    rope_type = parameters.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(
            f"unsupported RoPE scaling `rope_type={rope_type!r}` in the source config; "
            "only the default RoPE converts exactly."
        )
    theta = parameters.get("rope_theta", getattr(source_config, "rope_theta", None))
    if theta is None:
        raise ValueError("the source config has no `rope_theta`.")
    return float(theta)


def _check_source_config(source_config) -> None:
    model_type = getattr(source_config, "model_type", None)
    if model_type not in SUPPORTED_CAUSAL_LMS:
        raise ValueError(f"cannot convert `model_type={model_type!r}`: supported are {SUPPORTED_CAUSAL_LMS}.")
    if getattr(source_config, "hidden_act", "silu") != "silu":
        raise ValueError(
            f"unsupported `hidden_act={source_config.hidden_act!r}` (the backbone's MLP is SwiGLU)."
        )
    if getattr(source_config, "mlp_bias", False):
        raise ValueError("unsupported `mlp_bias=True` (the backbone's MLP has no biases).")
    head_dim = getattr(source_config, "head_dim", None)
    if head_dim is not None and head_dim != source_config.hidden_size // source_config.num_attention_heads:
        raise ValueError(f"unsupported `head_dim={head_dim}` != hidden_size / num_attention_heads.")
    if model_type == "qwen2" and getattr(source_config, "use_sliding_window", False):
        raise ValueError(
            "unsupported `use_sliding_window=True` (the backbone attends over the whole sequence)."
        )


def _special_id(value) -> int | None:
    """A causal LM may list several EOS ids; the LoMDM config keeps the first."""
    return value[0] if isinstance(value, (list, tuple)) else value


def lomdm_config_from_causal_lm(
    source_config, *, mask_token_id: int, schedule: str = "lomdm", shift: bool = True, **config_overrides
) -> LoMDMConfig:
    """The `LoMDMConfig` of a converted `source_config`; `config_overrides` set non-architecture fields
    (`max_position_embeddings`, `c1`, `c2`, scheduler sizes, `dropout`, ...)."""
    _check_source_config(source_config)
    # Fixed by the source weights: a converted model cannot change them.
    fixed = {
        "vocab_size": max(source_config.vocab_size, mask_token_id + 1),
        "hidden_size": source_config.hidden_size,
        "num_hidden_layers": source_config.num_hidden_layers,
        "num_attention_heads": source_config.num_attention_heads,
        "num_key_value_heads": getattr(source_config, "num_key_value_heads", None),
        "intermediate_size": source_config.intermediate_size,
        "rope_theta": _rope_theta(source_config),
        "rms_norm_eps": source_config.rms_norm_eps,
        "attention_bias": source_config.model_type == "qwen2"
        or bool(getattr(source_config, "attention_bias", False)),
        "tie_word_embeddings": bool(getattr(source_config, "tie_word_embeddings", False)),
        "mask_token_id": mask_token_id,
    }
    clash = sorted(set(config_overrides) & set(fixed))
    if clash:
        raise ValueError(f"{clash} are fixed by the source weights and cannot be overridden.")
    defaults = {
        "max_position_embeddings": source_config.max_position_embeddings,
        "initializer_range": getattr(source_config, "initializer_range", 0.02),
        "pad_token_id": _special_id(source_config.pad_token_id),
        "bos_token_id": _special_id(source_config.bos_token_id),
        "eos_token_id": _special_id(source_config.eos_token_id),
        "schedule": schedule,
        "shift": shift,
    }
    return LoMDMConfig(**fixed, **{**defaults, **config_overrides})


def load_causal_lm(path: str, dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """A causal LM and its tokenizer from a folder or Hub id; a folder holding only a `.gguf` file loads
    through transformers' GGUF support (dequantised)."""
    kwargs = {}
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        gguf = sorted(name for name in os.listdir(path) if name.endswith(".gguf"))
        if len(gguf) != 1:
            raise ValueError(f"{path} has no config.json and {len(gguf)} .gguf files; expected exactly one.")
        kwargs["gguf_file"] = gguf[0]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def mask_token_id_for(tokenizer: PreTrainedTokenizerBase | None, vocab_size: int) -> tuple[int, bool]:
    """`(id, is_new)`: the tokenizer's mask token, else a new `<|mask|>` added to it (in place); without a
    tokenizer, the id just past the source vocabulary."""
    if tokenizer is None:
        return vocab_size, True
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id, False
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    return tokenizer.mask_token_id, True


@torch.no_grad()
def _copy_weights(model: PreTrainedModel, source: PreTrainedModel, new_token_ids: list[int]) -> None:
    """Copy every source tensor onto the parameter of the same name; the rows of new tokens (the mask token,
    and any row past the source vocabulary) get the mean embedding. Every backbone parameter must be covered
    and every source tensor used."""
    target = dict(model.named_parameters(remove_duplicate=False))
    source_state = {k: v for k, v in source.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    unused = sorted(set(source_state) - set(target))
    if unused:
        raise ValueError(f"source weights with no place in the LoMDM backbone: {unused[:5]}")
    for name, tensor in source_state.items():
        param = target[name]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = tensor.shape[0]
            param[:rows].copy_(tensor)
            new_rows = sorted(set(new_token_ids) | set(range(rows, param.shape[0])))
            param[new_rows] = tensor.float().mean(0).to(param.dtype)
        elif param.shape != tensor.shape:
            raise ValueError(f"`{name}`: source shape {tuple(tensor.shape)} != {tuple(param.shape)}.")
        else:
            param.copy_(tensor)
    backbone = {n for n in target if n.startswith(("model.", "lm_head."))}
    for name in sorted(backbone - set(source_state)):
        if name.endswith("self_attn.o_proj.bias"):  # Qwen2 has q/k/v biases only
            target[name].zero_()
        elif not (name == "lm_head.weight" and model.config.tie_word_embeddings):
            raise ValueError(f"the source checkpoint has no weight for `{name}`.")


def from_causal_lm(
    cls,
    model_or_path: PreTrainedModel | str,
    schedule: str = "lomdm",
    shift: bool = True,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype | str = "auto",
    **config_overrides,
):
    r"""Build a `cls` (a `LoMDMForMaskedDiffusion`) whose backbone carries a causal LM's weights one to one.

    Args:
        cls: the model class (`LoMDMForMaskedDiffusion.from_causal_lm` passes itself).
        model_or_path (`PreTrainedModel` or `str`): a `LlamaForCausalLM` / `Qwen2ForCausalLM`, or a folder / Hub id
            to load one from (a folder holding a single `.gguf` file loads through transformers' GGUF support).
        schedule (`str`): the LoMDM schedule; the new schedulers start as e = c1.
        shift (`bool`): read the prediction for position i from the hidden state at i - 1, so the model starts
            from the source model's next-token head.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): the source tokenizer; a `<|mask|>` token is added to it
            in place unless it has a mask token (loaded from `model_or_path` when that is a path, but then not
            returned: pass it, or use `lomdm-convert`, which saves both).
        dtype (defaults to `"auto"`): dtype when loading from a path; the model keeps the source's.
        config_overrides: other `LoMDMConfig` fields (`max_position_embeddings`, `c1`, `c2`, ...); fields fixed by
            the source weights raise a `ValueError`.

    Without a tokenizer the mask token is the id just past the source vocabulary (`config.mask_token_id`).
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        source, loaded_tokenizer = load_causal_lm(str(model_or_path), dtype)
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    elif isinstance(model_or_path, PreTrainedModel):
        source = model_or_path
    else:
        raise ValueError(
            f"`model_or_path` must be a causal LM or a path, got {type(model_or_path).__name__}."
        )
    _check_source_config(source.config)
    mask_token_id, is_new = mask_token_id_for(tokenizer, source.config.vocab_size)
    config = lomdm_config_from_causal_lm(
        source.config, mask_token_id=mask_token_id, schedule=schedule, shift=shift, **config_overrides
    )
    config._attn_implementation = getattr(source.config, "_attn_implementation", None) or "sdpa"
    if config._attn_implementation not in ("eager", "sdpa"):
        config._attn_implementation = "sdpa"
    model = cls(config).to(next(source.parameters()).dtype)
    _copy_weights(model, source, [mask_token_id] if is_new else [])
    return model.eval()


__all__ = [
    "MASK_TOKEN",
    "SUPPORTED_CAUSAL_LMS",
    "from_causal_lm",
    "load_causal_lm",
    "lomdm_config_from_causal_lm",
    "mask_token_id_for",
]
