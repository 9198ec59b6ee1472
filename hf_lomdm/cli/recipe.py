"""The `lomdm-train` recipe: its dataclasses (`ModelArguments`, `SampleArguments`, beside
`hf_lomdm.data.DataArguments` and `hf_lomdm.trainer.LoMDMTrainingArguments`), the YAML file turned into flags, and
every check that can run before any data or model work (`parse_args`, `parse_recipe`). `hf_lomdm.cli.train` runs the
recipe.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
import yaml
from transformers import AutoConfig
from transformers.utils import logging

from ..configuration_lomdm import LoMDMConfig
from ..data import DEFAULT_SPECIAL_TOKENS, DataArguments
from ..lora import BACKBONE_TARGET_MODULES
from ..runtime import has_fast_bf16, resolve_bf16
from ..schedule_lomdm import SCHEDULES
from ..trainer import LoMDMTrainingArguments
from .common import (
    DataclassArgumentParser,
    UsageError,
    check_local_folder,
    from_pretrained,
    normalize_argv,
)

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """The model and tokenizer. Architecture fields left at None take the `LoMDMConfig` default (12 x 768)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from this saved model (its config and weights) instead of a new one."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer to use; default: the one of `model_name_or_path`, else a new byte-level BPE."
        },
    )
    tokenizer_type: Literal["bpe", "char"] = field(
        default="bpe",
        metadata={
            "help": "Tokenizer trained when none is given: 'bpe' (byte-level BPE of `tokenizer_vocab_size`) or "
            "'char' (one id per character of the training text, plus <|unk|>)."
        },
    )
    tokenizer_vocab_size: int = field(
        default=4096, metadata={"help": "Vocabulary size of a newly trained BPE tokenizer."}
    )
    schedule: str | None = field(
        default=None,
        metadata={
            "help": "A schedule kind of `schedule_lomdm.SCHEDULES`: linear (MDLM), polynomial, per_position "
            "(MDM(LS)) or lomdm (default).",
            "choices": list(SCHEDULES),
        },
    )
    c1: float | None = field(default=None, metadata={"help": "Exponent centre c1 (e = c1 + c2 NormSig)."})
    c2: float | None = field(default=None, metadata={"help": "Exponent range c2 < c1."})
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    scheduler_intermediate_size: int | None = None
    scheduler_head_size: int | None = None
    dropout: float | None = None
    time_conditioning: bool | None = None
    tie_word_embeddings: bool | None = None
    attn_implementation: Literal["sdpa", "eager"] = field(
        default="sdpa", metadata={"help": "Attention kernel."}
    )
    lora_r: int | None = field(
        default=None,
        metadata={
            "help": "Train a LoRA adapter of this rank on `model_name_or_path` instead of all weights."
        },
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(BACKBONE_TARGET_MODULES),
        metadata={"help": "Backbone projections that get LoRA (llama names)."},
    )
    lora_train_schedulers: bool = field(
        default=True,
        metadata={"help": "Train the learned schedulers in full with the adapter (else freeze them)."},
    )


@dataclass
class SampleArguments:
    """Unconditional samples printed (and timed) after training."""

    sample_count: int = field(default=4, metadata={"help": "Samples to print after training (0: none)."})
    sample_steps: int | None = field(
        default=None,
        metadata={"help": "Sampler steps; None: the exact first-hitting sampler (one pass per token)."},
    )
    sample_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})


_DATACLASSES = (ModelArguments, DataArguments, LoMDMTrainingArguments, SampleArguments)


def _yaml_to_argv(config: dict[str, Any]) -> list[str]:
    """`{key: value}` from a recipe file -> `["--key", "value", ...]` for HfArgumentParser."""
    argv = []
    for key, value in config.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(item) for item in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def _recipe(path: str) -> dict[str, Any]:
    """The `{argument: value}` mapping of a recipe file; `UsageError` for a missing file or a wrong form."""
    if not path.endswith((".yaml", ".yml")):
        hint = next((path + ext for ext in (".yaml", ".yml") if os.path.isfile(path + ext)), None)
        if hint is not None:
            raise UsageError(f"recipe {path!r} has no .yaml extension: did you mean {hint!r}?")
        raise UsageError(
            f"{path!r} is not a recipe: the first argument must be a .yaml / .yml file (see training/configs/) "
            "or a --flag."
        )
    if not os.path.isfile(path):
        raise UsageError(f"recipe {path!r}: no such file.")
    with open(path, encoding="utf-8") as f:
        try:
            config = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise UsageError(f"recipe {path!r} is not valid YAML: {error}") from error
    if not isinstance(config, dict):
        raise UsageError(
            f"{path} must hold a mapping of argument names to values, got {type(config).__name__}."
        )
    known = {f.name for cls in _DATACLASSES for f in fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise UsageError(f"unknown keys {unknown} in {path}.")
    return config


def _without_bare_debug(argv: list[str]) -> list[str]:
    """`argv` without a `--debug` that has no value: that one asks `run_cli` for tracebacks, while
    `--debug VALUE` is `TrainingArguments.debug`."""
    return [
        arg
        for index, arg in enumerate(argv)
        if not (arg == "--debug" and (index + 1 == len(argv) or argv[index + 1].startswith("-")))
    ]


def _check_arguments(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: LoMDMTrainingArguments,
    sample_args: SampleArguments,
) -> None:
    """Every check that needs no data or model, so that a bad recipe fails before tokenizing / building: the
    values `transformers` does not check, the local folders, and the architecture (a `LoMDMConfig` is built)."""
    for name in ("learning_rate", "weight_decay", "max_grad_norm", "warmup_steps"):
        value = getattr(training_args, name)
        if not (math.isfinite(value) and value >= 0) or (name == "learning_rate" and value == 0):
            bound = "> 0" if name == "learning_rate" else ">= 0"
            raise UsageError(f"`{name}` must be a finite number {bound}, got {value}.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise UsageError(f"`{name}` must be >= 1, got {getattr(training_args, name)}.")
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(data_args, name) is not None and getattr(data_args, name) < 1:
            raise UsageError(f"`{name}` must be >= 1 (or unset), got {getattr(data_args, name)}.")
    if model_args.lora_r is not None and model_args.lora_r < 1:
        raise UsageError(f"`lora_r` must be >= 1, got {model_args.lora_r}.")
    if not 0.0 <= model_args.lora_dropout < 1.0:
        raise UsageError(f"`lora_dropout` must be in [0, 1), got {model_args.lora_dropout}.")
    if model_args.tokenizer_vocab_size <= len(DEFAULT_SPECIAL_TOKENS):
        raise UsageError(
            f"`tokenizer_vocab_size` must exceed the {len(DEFAULT_SPECIAL_TOKENS)} special tokens, got "
            f"{model_args.tokenizer_vocab_size}."
        )
    if sample_args.sample_count < 0:
        raise UsageError(f"`sample_count` must be >= 0, got {sample_args.sample_count}.")
    if sample_args.sample_steps is not None and sample_args.sample_steps < 1:
        raise UsageError(f"`sample_steps` must be >= 1 (or unset), got {sample_args.sample_steps}.")
    if not sample_args.sample_temperature > 0:
        raise UsageError(f"`sample_temperature` must be > 0, got {sample_args.sample_temperature}.")
    if model_args.tokenizer_name_or_path is not None:
        model_args.tokenizer_name_or_path = check_local_folder(
            model_args.tokenizer_name_or_path, "`tokenizer_name_or_path`"
        )
    if model_args.model_name_or_path is not None:  # its config: a missing folder or Hub repo fails here
        model_args.model_name_or_path = check_local_folder(
            model_args.model_name_or_path, "`model_name_or_path`"
        )
        from_pretrained(AutoConfig, model_args.model_name_or_path, "`model_name_or_path`")
    for name in ("train_files", "validation_files"):
        for path in getattr(data_args, name) or []:
            if not (
                os.path.isfile(path) or "://" in path or any(c in path for c in "*?[")
            ):  # globs, URLs pass
                raise UsageError(f"`{name}` {path!r}: no such file.")
    if model_args.model_name_or_path is None:
        LoMDMConfig(max_position_embeddings=data_args.block_size, **architecture(model_args))


def parse_recipe(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, LoMDMTrainingArguments, SampleArguments, bool]:
    """`parse_args`, and whether `bf16: auto` is left to a calibration of the training step
    (`hf_lomdm.precision.calibrate_training_precision`): on a CPU with bf16 units, where the gain depends on the
    model size. The training arguments then say float32 until the calibration decides."""
    # allow_abbrev=False: `--max_step 5` must not silently mean `--max_steps 5`.
    parser = DataclassArgumentParser(_DATACLASSES)
    argv = _without_bare_debug(list(argv))
    if argv and not argv[0].startswith("-"):
        argv = _yaml_to_argv(_recipe(argv[0])) + argv[1:]
    argv, calibrate = _resolve_auto_bf16(normalize_argv(parser, argv))
    model_args, data_args, training_args, sample_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.lora_r is not None and model_args.model_name_or_path is None:
        raise UsageError(f"`lora_r={model_args.lora_r}` adapts a trained model: set `model_name_or_path`.")
    if training_args.max_steps <= 0 and not any(arg.startswith("--num_train_epochs") for arg in argv):
        raise UsageError(
            f"`max_steps={training_args.max_steps}`: give a positive number of steps, or set `num_train_epochs` "
            "explicitly to train by epochs."
        )
    _check_arguments(model_args, data_args, training_args, sample_args)
    return model_args, data_args, training_args, sample_args, calibrate


def parse_args(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, LoMDMTrainingArguments, SampleArguments]:
    """Parse `[CONFIG.yaml] [--key value ...]`; flags after the file override it, unknown keys raise. Everything
    that can be checked without data is checked here (`UsageError` / `ValueError`)."""
    return parse_recipe(argv)[:4]


def _flag_value(argv: list[str], name: str) -> str | None:
    """Value of the last `--name value` / `--name=value` in `argv`."""
    found = None
    for index, arg in enumerate(argv):
        if arg == f"--{name}" and index + 1 < len(argv):
            found = argv[index + 1]
        elif arg.startswith(f"--{name}="):
            found = arg.split("=", 1)[1]
    return found


def _resolve_auto_bf16(argv: list[str]) -> tuple[list[str], bool]:
    """Every `--bf16 auto` -> `--bf16 true|false` for the device the run will use (logged once; see
    `hf_lomdm.runtime`), and whether the choice is left to a calibration: `auto` on a CPU with bf16 units is
    `false` until `hf_lomdm.precision` has timed both precisions. A later explicit `--bf16 true|false` still wins,
    as for any flag.

    `TrainingArguments.bf16` is a bool and configures accelerate in `__post_init__`, so the choice is made on the
    command line before parsing. The device is the CPU with `--use_cpu true` or without CUDA, else the GPU.
    """
    auto = [
        i
        for i, arg in enumerate(argv)
        if arg.lower() == "--bf16=auto"
        or (arg == "--bf16" and i + 1 < len(argv) and argv[i + 1].lower() == "auto")
    ]
    if not auto:
        return argv, False
    use_cpu = _flag_value(argv, "use_cpu")
    on_cpu = (use_cpu or "").lower() in ("true", "1", "yes") or not torch.cuda.is_available()
    calibrate = on_cpu and has_fast_bf16("cpu") and (_flag_value(argv, "bf16") or "").lower() == "auto"
    if calibrate:
        logger.warning(
            "bf16=auto on cpu: bf16 matrix units -> timing bf16 autocast against float32 on the first batch."
        )
        value = "false"
    else:
        value = "true" if resolve_bf16("auto", "cpu" if on_cpu else "cuda") else "false"
    argv = list(argv)
    for index in auto:
        if argv[index] == "--bf16":
            argv[index + 1] = value
        else:
            argv[index] = f"--bf16={value}"
    return argv, calibrate


# The `LoMDMConfig` fields (its constructor's parameters): a `ModelArguments` field of the same name sets one.
_CONFIG_FIELDS = frozenset(inspect.signature(LoMDMConfig.__init__).parameters) - {"self", "kwargs"}


def architecture(model_args: ModelArguments) -> dict[str, Any]:
    """The `LoMDMConfig` fields set in `model_args`."""
    return {
        f.name: getattr(model_args, f.name)
        for f in fields(ModelArguments)
        if f.name in _CONFIG_FIELDS and getattr(model_args, f.name) is not None
    }


__all__ = ["ModelArguments", "SampleArguments", "architecture", "parse_args", "parse_recipe"]
