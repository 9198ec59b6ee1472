"""Sampling settings of LoMDM: `LoMDMGenerationConfig`, saved as `generation_config.json`.

Hub-facing: this file ships inside checkpoints (trust_remote_code), so it imports only torch, transformers and
its `*_lomdm.py` siblings, through single-dot imports (`from .x import y`): transformers copies exactly those
into a saved folder.

The valid `order` values, and the settings only some orders take (`eps`, `threshold`, `order_temperature`,
`order_weight`), are declared by the reveal-rule registry (`reveal_lomdm.REVEAL_RULES`, `REVEAL_OPTIONS`); the
config asks it and holds no list of its own, so the config and the sampler cannot disagree on them.

The argument names of other diffusion LMs' samplers (Dream's `diffusion_generate`, LLaDA's `generate`) are
translated here, in `SETTING_ALIASES`, into the LoMDM settings of the same meaning; a value with no LoMDM
equivalent raises. `generate`, `diffusion_generate` and the config itself accept them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from transformers import GenerationConfig

from .cache_lomdm import CACHE_IMPLEMENTATIONS
from .reveal_lomdm import REVEAL_OPTIONS, REVEAL_RULES, check_reveal_options

ORDERS = tuple(REVEAL_RULES)
# Generation settings that default to the model config's special token ids.
SPECIAL_TOKENS = ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Dream's `alg` names (Dream-v0 `diffusion_generate`) and the order that implements each.
DREAM_ALGORITHMS = {
    "origin": "random",
    "maskgit_plus": "confidence",
    "topk_margin": "margin",
    "entropy": "entropy",
}
# LLaDA's `remasking` names: `low_confidence` keeps the most probable sampled tokens, `random` reveals the step's
# quota at uniformly random positions (`learned_ranked` with `order_temperature=inf` ignores ê: the same rule).
LLADA_REMASKING = {
    "low_confidence": {"order": "confidence"},
    "random": {"order": "learned_ranked", "order_temperature": math.inf},
}


# How one foreign argument becomes LoMDM settings: its value -> {setting: value}.
Translation = Callable[[Any], dict[str, Any]]


def _choice(name: str, choices: dict[str, Any], build: Callable[[Any], dict[str, Any]]) -> Translation:
    """An argument whose values name LoMDM settings: `build(choices[value])`; any other value raises."""

    def translate(value: Any) -> dict[str, Any]:
        if value not in choices:
            raise ValueError(f"`{name}` must be one of {sorted(choices)}, got {value!r}.")
        return build(choices[value])

    return translate


def _renamed(setting: str) -> Translation:
    """An argument that is the LoMDM `setting` under another name."""
    return lambda value: {setting: value}


def _only_off(name: str, off: tuple[Any, ...], meaning: str) -> Translation:
    """An argument LoMDM has no equivalent of: accepted at its "off" values only (it then sets nothing)."""

    def translate(value: Any) -> dict[str, Any]:
        if value not in off:
            raise ValueError(
                f"`{name}={value!r}` has no LoMDM equivalent ({meaning}); only {' or '.join(map(repr, off))} "
                "is accepted."
            )
        return {}

    return translate


# Foreign argument name -> the LoMDM settings it means (a function of its value). The README's "Generate"
# section tables them. Names that mean the same in both (`steps`, `block_length`, `temperature`, `top_p`, `top_k`,
# `eps`, `max_new_tokens`, ...) are LoMDM settings already and need no entry.
SETTING_ALIASES: dict[str, Translation] = {
    "alg": _choice("alg", DREAM_ALGORITHMS, lambda order: {"order": order}),  # Dream
    "alg_temp": _only_off(  # Dream: positions drawn from softmax(score / alg_temp)
        "alg_temp", (None, 0), "the ranked orders reveal the highest-scoring positions"
    ),
    "gen_length": _renamed("max_new_tokens"),  # LLaDA
    "mask_id": _renamed("mask_token_id"),  # LLaDA
    "remasking": _choice("remasking", LLADA_REMASKING, dict),  # LLaDA
    "cfg_scale": _only_off("cfg_scale", (0,), "LoMDM has no classifier-free guidance"),  # LLaDA
}


def resolve_setting_aliases(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with each name of `SETTING_ALIASES` replaced by the LoMDM settings it means.

    Raises a `ValueError` for a value with no LoMDM equivalent, and when an alias and a setting it stands for are
    both given (e.g. `gen_length` and `max_new_tokens`).
    """
    resolved = {name: value for name, value in kwargs.items() if name not in SETTING_ALIASES}
    given_as = {name: name for name in resolved}  # setting -> the argument that set it
    for alias in (name for name in kwargs if name in SETTING_ALIASES):
        for name, value in SETTING_ALIASES[alias](kwargs[alias]).items():
            if name in resolved:
                raise ValueError(f"pass either `{alias}` or `{given_as[name]}`, not both.")
            resolved[name], given_as[name] = value, alias
    return resolved


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
            `entropy` (lowest entropy first), `left_to_right`, `learned_ranked` (a fixed number of reveals per
            step, in the order the learned exponents ê rank the positions; see `order_temperature`), or
            `confidence_learned` / `margin_learned` (the same quotas, ranked by the confidence / margin score plus
            `order_weight` times the standardised log ê).
        order_temperature (`float`, *optional*): Only with `order="learned_ranked"`: 0 (the default) reveals the
            highest ê first (the learned schedule's most likely order), 1 draws the order from the learned order
            distribution (Plackett-Luce with weights ê), values in between sharpen it (weights ê^(1/τ)), and
            `float("inf")` ignores ê (a uniformly random order with the same number of reveals per step).
        order_weight (`float`, *optional*): Only with `order="confidence_learned"` / `"margin_learned"`: λ ≥ 0,
            the weight of log ê (standardised over the row's masked positions) against the score; 1 by default, 0
            is plain `confidence` / `margin`, `float("inf")` ranks by ê (the score breaks ties).
        threshold (`float`, *optional*): Only with `order="confidence"`: also reveal every position whose
            sampled token has probability ≥ `threshold`; at least one token per row per step.
        block_length (`int`, *optional*): Semi-autoregressive blocks of this many new tokens, generated left
            to right (`max_new_tokens` and `steps` must split evenly). Not available with infilling.
        eps (`float`, defaults to 0.0): Only with `order="learned"` / `"random"`: MDLM's time truncation; once t
            would fall below `eps`, every remaining position is revealed at once. 0 keeps the sampler exact.
            (Which order takes which of these four settings is declared by `reveal_lomdm.REVEAL_RULES`; setting
            one for another order raises.)

        > Caches

        use_cache (`bool`, defaults to `True`): Reuse a row's last pass while its canvas is unchanged (only
            when the backbone is not time-conditioned, where it is exact), and allow `cache_implementation`.
            `False` turns every cache off.
        cache_implementation (`str`, *optional*): A block KV cache (needs `block_length`): `"prefix"` computes
            the keys / values of the prompt and of the finished blocks once per block, and every later pass of
            the block recomputes the block and the masked suffix only; `"dual"` also caches the masked suffix and
            recomputes the block only. Approximate: the cached columns do not see the tokens revealed since the
            block began (see `cache_lomdm`). `None`: every pass runs on the whole canvas.

        > Token distribution (applied to log p_θ before sampling, through transformers' warpers)

        do_sample (`bool`, *optional*): transformers' switch: `False` picks the most likely token at every reveal
            (greedy, as `temperature=0`, whatever `temperature` says), `True` samples at `temperature` (which must
            then be > 0). `None` (the default): `temperature` decides.
        temperature (`float`, defaults to 1.0): Softmax temperature; 0 picks the most likely token (greedy).
        top_k (`int`, *optional*): Keep the `top_k` most likely tokens.
        top_p (`float`, *optional*): Nucleus sampling mass.

        > Outputs

        num_return_sequences (`int`, defaults to 1): Samples per input row.
        return_dict_in_generate (`bool`, defaults to `False`): Return a [`LoMDMGenerateOutput`], not a tensor.
        output_order (`bool`, defaults to `False`): Also return `reveal_pass`, the index of the pass that
            revealed each position (the generation order).
        output_history (`bool`, defaults to `False`): Also return the canvas after each revealing step.

        > Special tokens (default to the model config's)

        mask_token_id (`int`): The mask token; must equal the model's.
        pad_token_id (`int`, *optional*): Fills the generated positions after the first EOS (default: EOS).
        bos_token_id (`int`, *optional*): Prompt used when `generate` is called without inputs.
        eos_token_id (`int` or `list[int]`, *optional*): End of sequence; a row whose block contains it stops.

    Dream's and LLaDA's argument names (`alg`, `alg_temp`, `gen_length`, `remasking`, `mask_id`, `cfg_scale`) are
    accepted wherever a setting is and stored under the LoMDM name they mean (`SETTING_ALIASES`).
    """

    def __init__(self, **kwargs: Any):
        # GenerationConfig.__init__ is not called on purpose (as in diffusion_gemma): its autoregressive
        # fields (beams, penalties, ...) mean nothing here, and an unknown field must raise instead of being
        # stored.
        kwargs = resolve_setting_aliases(kwargs)
        self.max_new_tokens: int | None = kwargs.pop("max_new_tokens", None)
        self.max_length: int | None = kwargs.pop("max_length", None)

        self.steps: int | None = kwargs.pop("steps", None)
        self.order: str = kwargs.pop("order", "learned")
        self.threshold: float | None = kwargs.pop("threshold", None)
        self.order_temperature: float | None = kwargs.pop("order_temperature", None)
        self.order_weight: float | None = kwargs.pop("order_weight", None)
        self.block_length: int | None = kwargs.pop("block_length", None)
        self.eps: float = kwargs.pop("eps", 0.0)
        self.use_cache: bool = kwargs.pop("use_cache", True)
        self.cache_implementation: str | None = kwargs.pop("cache_implementation", None)

        self.do_sample: bool | None = kwargs.pop("do_sample", None)
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
                f"unknown LoMDM generation settings {sorted(kwargs)}; valid ones are {self.field_names} "
                f"(and the other samplers' names {sorted(SETTING_ALIASES)})."
            )
        self.validate()

    @property
    def greedy(self) -> bool:
        """Whether every reveal takes the most likely token (`do_sample=False`, or `temperature=0`)."""
        return self.do_sample is False or (self.do_sample is None and self.temperature == 0)

    @property
    def field_names(self) -> list[str]:
        return [name for name in vars(self) if not name.startswith("_") and name != "transformers_version"]

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the fields named in `kwargs` (or by an alias of `SETTING_ALIASES`), validate, and return the entries
        that are neither."""
        kwargs = resolve_setting_aliases(kwargs)
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
        check_reveal_options(self.order, {name: getattr(self, name) for name in REVEAL_OPTIONS})
        if self.cache_implementation is not None:
            if self.cache_implementation not in CACHE_IMPLEMENTATIONS:
                raise ValueError(
                    f"`cache_implementation` must be one of {CACHE_IMPLEMENTATIONS} or None, got "
                    f"{self.cache_implementation!r}."
                )
            if self.block_length is None:
                raise ValueError(
                    f"`cache_implementation={self.cache_implementation!r}` caches finished blocks and needs "
                    "`block_length`."
                )
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or self.temperature < 0
        ):
            raise ValueError(f"`temperature` must be a number >= 0 (0 = greedy), got {self.temperature!r}.")
        if self.do_sample is not None and not isinstance(self.do_sample, bool):
            raise ValueError(f"`do_sample` must be a bool or None, got {self.do_sample!r}.")  # noqa: TRY004
        if self.do_sample and self.temperature == 0:
            raise ValueError("`do_sample=True` samples and `temperature=0` is greedy; set one of them.")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not 0.0 < self.top_p <= 1.0):
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p!r}.")
        for name in ("use_cache", "return_dict_in_generate", "output_order", "output_history"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")  # noqa: TRY004
        for name in ("output_order", "output_history"):
            if getattr(self, name) and not self.return_dict_in_generate:
                raise ValueError(
                    f"`{name}=True` needs `return_dict_in_generate=True` (a tensor has no room for it)."
                )
        for name in SPECIAL_TOKENS:
            value = getattr(self, name)
            ids = value if name == "eos_token_id" and isinstance(value, list) else [value]
            if value is not None and not all(_is_int(i) and i >= 0 for i in ids):
                raise ValueError(f"`{name}` must be a non-negative token id, got {value!r}.")

    @classmethod
    def from_model_config(cls, model_config: Any) -> LoMDMGenerationConfig:
        """Default sampling settings with the special token ids of a model config (or its dict)."""
        config = model_config if isinstance(model_config, dict) else model_config.to_dict()
        return cls(**{name: config.get(name) for name in SPECIAL_TOKENS})


__all__ = [
    "DREAM_ALGORITHMS",
    "LLADA_REMASKING",
    "ORDERS",
    "SETTING_ALIASES",
    "SPECIAL_TOKENS",
    "LoMDMGenerationConfig",
    "Translation",
    "resolve_setting_aliases",
]
