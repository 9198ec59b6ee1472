"""Helpers the test modules share: the tiny config and model (LlamaModelTester-sized: CPU seconds), a word-level
tokenizer that matches the tiny config's special ids, a tiny Llama / Qwen2 causal LM to convert, the tiny
`lomdm-train` recipe and the tests' default `LoMDMTrainingArguments`.

Test modules import this file (`from helpers import tiny_model`); `conftest.py` holds only fixtures and hooks.
Subprocesses started by the tests import it the same way, with `tests/` on their `PYTHONPATH`.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.trainer import LoMDMTrainingArguments

MASK_ID = 0
CAUSAL_LM_VOCAB = 50  # the tiny causal LM's vocabulary (no mask token: conversion appends one)

# The word tokenizer's corpus: the sentences the lm-eval checkpoint is overfit on, plus distractor words.
SENTENCES = ["the cat sat on the mat .", "a dog ran in the park .", "the bird sang a sweet song ."]
WORDS = sorted({w for s in SENTENCES for w in s.split()} | {"red", "blue", "green", "tree", "car", "sky"})

# A `lomdm-train` recipe that trains in seconds on a CPU (format with `corpus=` a text file).
CLI_RECIPE = """\
train_files: [{corpus}]
validation_split_percentage: 25
tokenizer_vocab_size: 300
hidden_size: 32
num_hidden_layers: 1
num_attention_heads: 2
intermediate_size: 64
block_size: 32
max_steps: 2
per_device_train_batch_size: 4
report_to: none
disable_tqdm: true
use_cpu: true
save_strategy: 'no'
sample_count: 1
sample_steps: 4
"""


def tiny_config(**overrides) -> LoMDMConfig:
    kwargs = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        mask_token_id=MASK_ID,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        schedule="lomdm",
        scheduler_intermediate_size=32,
        scheduler_head_size=16,
    )
    kwargs.update(overrides)
    return LoMDMConfig(**kwargs)


def task_model(task, schedule: str, num_hidden_layers: int = 1, **overrides) -> LoMDMForMaskedDiffusion:
    """A 32-wide model for an order-zoo / synthetic task (`benchmarks/order_zoo`), with room for the `<bos>`
    anchor; `overrides` set other `LoMDMConfig` fields."""
    from benchmarks.order_zoo.synthetic import BOS_ID
    from benchmarks.order_zoo.synthetic import MASK_ID as TASK_MASK_ID

    kwargs = dict(
        vocab_size=task.vocab_size,
        hidden_size=32,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=task.length + 1,
        mask_token_id=TASK_MASK_ID,
        bos_token_id=BOS_ID,
        schedule=schedule,
    )
    return LoMDMForMaskedDiffusion(LoMDMConfig(**(kwargs | overrides)))


def tiny_model(seed: int = 0, randomize_schedule: bool = True, **overrides) -> LoMDMForMaskedDiffusion:
    """A tiny model in eval mode. With `randomize_schedule`, the scheduler heads / position scores get
    non-zero weights (they start at zero, i.e. at the polynomial schedule) so the exponents vary."""
    torch.manual_seed(seed)
    model = LoMDMForMaskedDiffusion(tiny_config(**overrides)).eval()
    if randomize_schedule:
        with torch.no_grad():
            for scheduler in (model.forward_scheduler, model.reverse_scheduler):
                if scheduler is not None:
                    scheduler.score_proj.weight.normal_(0.0, 2.0)
                    scheduler.score_proj.bias.normal_(0.0, 1.0)
            if model.position_scores is not None:
                model.position_scores.weight.normal_(0.0, 2.0)
    return model


def tiny_causal_lm(kind: str = "llama", seed: int = 0, **overrides):
    """A tiny random causal LM with grouped-query attention (4 query, 2 key/value heads)."""
    torch.manual_seed(seed)
    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[kind]
    kwargs = dict(
        vocab_size=CAUSAL_LM_VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    kwargs.update(overrides)
    model = model_class(config_class(**kwargs)).eval()
    with torch.no_grad():  # random norms and biases, so a missed or swapped one cannot hide
        for name, param in model.named_parameters():
            if name.endswith(("bias", "norm.weight", "layernorm.weight")):
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model


def training_arguments(tmp_path, **overrides) -> LoMDMTrainingArguments:
    """`LoMDMTrainingArguments` for a quiet, reproducible CPU run writing to `tmp_path / "out"` (no saving, no
    reporting, a log every step, batches of 8 rows); `overrides` set any other field."""
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": True,
        "save_strategy": "no",
        "dataloader_pin_memory": False,
        "logging_steps": 1,
        "seed": 0,
        "per_device_train_batch_size": 8,
    }
    return LoMDMTrainingArguments(**{**defaults, **overrides})


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose special ids match the tiny config (mask 0, pad 1, bos 2, eos 3)."""
    vocab = {"[MASK]": 0, "[PAD]": 1, "[BOS]": 2, "[EOS]": 3, "[UNK]": 4}
    vocab.update({w: i + 5 for i, w in enumerate(WORDS)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        mask_token="[MASK]",
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        unk_token="[UNK]",
    )


__all__ = [
    "CAUSAL_LM_VOCAB",
    "CLI_RECIPE",
    "MASK_ID",
    "SENTENCES",
    "WORDS",
    "tiny_causal_lm",
    "tiny_config",
    "tiny_model",
    "training_arguments",
    "word_tokenizer",
]
