"""`lomdm-train CONFIG.yaml [--key value ...]`: train a LoMDM from a recipe (see `training/configs/`).

The YAML file and the command line set the fields of four dataclasses, parsed by `HfArgumentParser`:
`ModelArguments` (below), `hf_lomdm.data.DataArguments`, `hf_lomdm.trainer.LoMDMTrainingArguments` (every
`transformers.TrainingArguments` field) and `SampleArguments`. Command-line flags override the file.

Steps (keep in sync with `main`):
    1. Load the documents (default: the built-in Shakespeare corpus) and the tokenizer (trained with
       `tokenizers` on the training split unless one is given).
    2. Tokenize and pack rows of `block_size` tokens.
    3. Build the model (a new `LoMDMConfig`, or `model_name_or_path`) and train with `LoMDMTrainer`
       (`accelerate launch` for several processes; `resume_from_checkpoint` to continue).
    4. Save model + tokenizer + generation config to `output_dir`, evaluate the validation NELBO / PPL bound,
       print a few unconditional samples and a short report.

Launch with `accelerate launch --config_file training/accelerate/<config>.yaml -m hf_lomdm.train CONFIG.yaml`
for multi-process training.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
import yaml
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from .configuration_lomdm import LoMDMConfig
from .data import (
    SPECIAL_TOKENS,
    DataArguments,
    DataCollatorForMaskedDiffusion,
    group_texts,
    load_text_datasets,
    prompt_response_rows,
    train_bpe_tokenizer,
)
from .lora import BACKBONE_TARGET_MODULES, lomdm_lora_config
from .model_card import write_model_card
from .modeling_lomdm import LoMDMForMaskedDiffusion
from .trainer import LoMDMTrainer, LoMDMTrainingArguments

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
    tokenizer_vocab_size: int = field(
        default=4096, metadata={"help": "Vocabulary size of a newly trained tokenizer."}
    )
    schedule: Literal["linear", "polynomial", "per_position", "lomdm"] | None = field(
        default=None,
        metadata={"help": "linear (MDLM), polynomial, per_position (MDM(LS)) or lomdm (default)."},
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


def parse_args(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, LoMDMTrainingArguments, SampleArguments]:
    """Parse `[CONFIG.yaml] [--key value ...]`; flags after the file override it, unknown keys raise."""
    if argv and argv[0].endswith((".yaml", ".yml")):
        with open(argv[0], encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
        if not isinstance(config, dict):
            raise ValueError(
                f"{argv[0]} must hold a mapping of argument names to values, got {type(config).__name__}."
            )
        known = {f.name for cls in _DATACLASSES for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown} in {argv[0]}.")
        argv = _yaml_to_argv(config) + list(argv[1:])
    parser = HfArgumentParser(_DATACLASSES)
    return parser.parse_args_into_dataclasses(args=argv)


def _resume_checkpoint(args: LoMDMTrainingArguments) -> str | None:
    """`resume_from_checkpoint`: a path, or 'true' / 'last' for the newest checkpoint in `output_dir`."""
    value = args.resume_from_checkpoint
    if value is None or value.lower() not in ("true", "last"):
        return value
    last = get_last_checkpoint(args.output_dir)
    if last is None:
        raise ValueError(f"resume_from_checkpoint={value!r} but {args.output_dir} holds no checkpoint.")
    return last


def _tokenizer(
    model_args: ModelArguments,
    training_args: LoMDMTrainingArguments,
    texts: list[str],
    checkpoint: str | None,
) -> PreTrainedTokenizerBase:
    """The checkpoint's or model's tokenizer; else `tokenizer_name_or_path` (missing mask / pad / bos / eos
    tokens are added, e.g. to GPT-2's); else a byte-level BPE trained on `texts`."""
    if checkpoint is not None or model_args.model_name_or_path is not None:
        return AutoTokenizer.from_pretrained(checkpoint or model_args.model_name_or_path)
    if model_args.tokenizer_name_or_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
        missing = {name: token for name, token in SPECIAL_TOKENS.items() if getattr(tokenizer, name) is None}
        if missing:
            logger.info(f"Adding special tokens {missing} to {model_args.tokenizer_name_or_path}.")
            tokenizer.add_special_tokens(missing)
        return tokenizer
    # The local main process trains and saves it; the others wait and load the same files.
    with training_args.main_process_first(desc="training the tokenizer"):
        if training_args.local_process_index == 0:
            tokenizer = train_bpe_tokenizer(texts, vocab_size=model_args.tokenizer_vocab_size)
            tokenizer.save_pretrained(training_args.output_dir)
            return tokenizer
        return AutoTokenizer.from_pretrained(training_args.output_dir)


def _model(
    model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase, block_size: int
) -> LoMDMForMaskedDiffusion:
    if model_args.model_name_or_path is not None:
        model = AutoModelForMaskedLM.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation
        )
        if model.config.mask_token_id != tokenizer.mask_token_id:
            raise ValueError(
                f"the model's mask_token_id {model.config.mask_token_id} differs from the tokenizer's "
                f"{tokenizer.mask_token_id}."
            )
        return model
    architecture = {
        f.name: getattr(model_args, f.name)
        for f in fields(ModelArguments)
        if f.name
        not in ("model_name_or_path", "tokenizer_name_or_path", "tokenizer_vocab_size", "attn_implementation")
        and not f.name.startswith("lora_")
        and getattr(model_args, f.name) is not None
    }
    config = LoMDMConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=block_size,
        mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **architecture,
    )
    config._attn_implementation = model_args.attn_implementation
    return LoMDMForMaskedDiffusion(config)


def _samples(
    model: LoMDMForMaskedDiffusion, tokenizer: PreTrainedTokenizerBase, args: SampleArguments, seed: int
):
    """Unconditional samples: a BOS prompt filled to the generation config's `max_length`."""
    prompt = torch.full((args.sample_count, 1), tokenizer.bos_token_id, dtype=torch.long, device=model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    model.eval()
    with torch.no_grad():
        sequences = model.generate(
            prompt, steps=args.sample_steps, temperature=args.sample_temperature, generator=generator
        )
    return tokenizer.batch_decode(sequences, skip_special_tokens=True)


def train(argv: list[str]) -> dict[str, Any]:
    """Run a recipe: `train(["CONFIG.yaml", "--key", "value"])`; returns the final report (also printed)."""
    model_args, data_args, training_args, sample_args = parse_args(argv)
    if model_args.lora_r is not None and model_args.model_name_or_path is None:
        raise ValueError(f"`lora_r={model_args.lora_r}` adapts a trained model: set `model_name_or_path`.")
    logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)
    wall_start = time.time()

    # 1. Documents and tokenizer.
    checkpoint = _resume_checkpoint(training_args)
    raw = load_text_datasets(data_args, seed=training_args.seed)
    tokenizer = _tokenizer(model_args, training_args, raw["train"][data_args.text_column], checkpoint)

    # 2. Rows of tokens.
    with training_args.main_process_first(desc="tokenizing"):
        if data_args.prompt_column is not None:  # supervised fine-tuning: the prompt is never noised
            splits = {
                name: prompt_response_rows(
                    raw[name], tokenizer, data_args.block_size, data_args.prompt_column, data_args.text_column
                )
                for name in ("train", "validation")
            }
        else:
            splits = {
                name: group_texts(
                    raw[name],
                    tokenizer,
                    data_args.block_size,
                    data_args.packing,
                    data_args.text_column,
                    data_args.preprocessing_num_workers,
                )
                for name in ("train", "validation")
            }
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))

    # 3. Model and training.
    model = _model(model_args, tokenizer, data_args.block_size)
    model.generation_config.max_length = data_args.block_size
    if model_args.lora_r is not None:
        from peft import get_peft_model

        model = get_peft_model(
            model,
            lomdm_lora_config(
                model,
                r=model_args.lora_r,
                lora_alpha=model_args.lora_alpha,
                lora_dropout=model_args.lora_dropout,
                target_modules=model_args.lora_target_modules,
                train_schedulers=model_args.lora_train_schedulers,
            ),
        )
    if training_args.include_num_input_tokens_seen == "no":
        training_args.include_num_input_tokens_seen = "non_padding"  # for the tokens/s of the report
    trainer = LoMDMTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=DataCollatorForMaskedDiffusion(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # 4. Save, evaluate, sample, report.
    trainer.save_model()
    trainer.save_state()
    eval_metrics = trainer.evaluate()
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    tokens_per_second = trainer.state.num_input_tokens_seen / max(train_result.metrics["train_runtime"], 1e-9)
    report = {
        "output_dir": training_args.output_dir,
        "steps": trainer.state.global_step,
        "train_runtime_s": train_result.metrics["train_runtime"],
        "train_tokens_per_second": tokens_per_second,
        "eval_nelbo": eval_metrics["eval_nelbo"],
        "eval_ppl_bound": eval_metrics["eval_ppl_bound"],
        "eval_tokens": eval_metrics["eval_tokens"],
    }
    if trainer.is_world_process_zero():
        samples = (
            _samples(trainer.model, tokenizer, sample_args, training_args.seed)
            if sample_args.sample_count
            else []
        )
        if model_args.lora_r is None:  # an adapter folder gets PEFT's own card
            write_model_card(
                training_args.output_dir,
                trainer.model,
                tokenizer,
                seed=training_args.seed,
                samples=samples,
                eval_metrics={
                    "nelbo": eval_metrics["eval_nelbo"],
                    "ppl_bound": eval_metrics["eval_ppl_bound"],
                    "tokens": eval_metrics["eval_tokens"],
                },
                repo_id=training_args.hub_model_id or training_args.output_dir,
                dataset_name=data_args.dataset_name,
                training_data=f"`{data_args.dataset_name}`, {data_args.block_size}-token rows ({data_args.packing}), "
                f"{report['steps']} steps.",
            )
        report["wall_time_s"] = time.time() - wall_start
        print(f"\nlomdm-train: saved model, tokenizer and generation config to {training_args.output_dir}")
        print(
            f"  steps {report['steps']}, train {report['train_runtime_s']:.0f} s, "
            f"{tokens_per_second:.0f} tokens/s, wall {report['wall_time_s']:.0f} s"
        )
        print(
            f"  validation: NELBO {report['eval_nelbo']:.4f} nats/token, "
            f"PPL bound {report['eval_ppl_bound']:.2f} ({report['eval_tokens']:.0f} tokens, "
            f"{training_args.eval_time_samples} time samples per sequence)"
        )
        for i, text in enumerate(samples):
            print(f"--- sample {i} ---\n{text.strip()}")
    return report


def main() -> None:
    """Entry point of the `lomdm-train` console script."""
    train(sys.argv[1:])


if __name__ == "__main__":
    main()


__all__ = ["ModelArguments", "SampleArguments", "main", "parse_args", "train"]
