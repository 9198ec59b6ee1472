"""hf_lomdm: masked diffusion language models that learn their own generation order (LoMDM)."""

import importlib

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from .configuration_lomdm import LoMDMConfig
from .generation_config_lomdm import LoMDMGenerationConfig
from .generation_lomdm import LoMDMGenerateOutput, LoMDMGenerationMixin
from .modeling_lomdm import LoMDMForMaskedDiffusion, LoMDMModel, LoMDMOutput, LoMDMPreTrainedModel
from .objective import LoMDMLossOutput, lomdm_loss
from .sampler_lomdm import LoMDMSampler, LoMDMSamplerState

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it

AutoConfig.register("lomdm", LoMDMConfig, exist_ok=True)
AutoModel.register(LoMDMConfig, LoMDMModel, exist_ok=True)
AutoModelForMaskedLM.register(LoMDMConfig, LoMDMForMaskedDiffusion, exist_ok=True)
# What `pipeline("text-generation")` loads; the model is not causal, but its `generate` is what the pipeline calls
# (as diffusers / Hub diffusion LMs such as LLaDA2 register theirs).
AutoModelForCausalLM.register(LoMDMConfig, LoMDMForMaskedDiffusion, exist_ok=True)
# Saved folders then carry `auto_map` and the model files, so they also load with trust_remote_code=True.
LoMDMConfig.register_for_auto_class()
LoMDMModel.register_for_auto_class("AutoModel")
LoMDMForMaskedDiffusion.register_for_auto_class("AutoModelForMaskedLM")

# Training and evaluation load on first use, so `import hf_lomdm` does not import Trainer, datasets or peft.
_LAZY = {
    "DataCollatorForMaskedDiffusion": "data",
    "LoMDMTrainer": "trainer",
    "LoMDMTrainingArguments": "trainer",
    "lomdm_lora_config": "lora",
    "nelbo_perplexity": "evaluation",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DataCollatorForMaskedDiffusion",
    "LoMDMConfig",
    "LoMDMForMaskedDiffusion",
    "LoMDMGenerateOutput",
    "LoMDMGenerationConfig",
    "LoMDMGenerationMixin",
    "LoMDMLossOutput",
    "LoMDMModel",
    "LoMDMOutput",
    "LoMDMPreTrainedModel",
    "LoMDMSampler",
    "LoMDMSamplerState",
    "LoMDMTrainer",
    "LoMDMTrainingArguments",
    "lomdm_lora_config",
    "lomdm_loss",
    "nelbo_perplexity",
]
