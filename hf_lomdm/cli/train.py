"""`lomdm-train CONFIG.yaml [--key value ...]`: train a LoMDM from a recipe (see `training/configs/`).

The YAML file and the command line set the fields of four dataclasses, parsed by `HfArgumentParser`:
`ModelArguments` (below), `hf_lomdm.data.DataArguments`, `hf_lomdm.trainer.LoMDMTrainingArguments` (every
`transformers.TrainingArguments` field) and `SampleArguments`. Command-line flags override the file.

Steps (keep in sync with `train`):
    1. Load the documents (default: the built-in Shakespeare corpus) and the tokenizer (trained with
       `tokenizers` on the training split unless one is given).
    2. Tokenize and pack rows of `block_size` tokens.
    3. Build the model (a new `LoMDMConfig`, or `model_name_or_path`); with `bf16: auto` on a CPU with bf16 units,
       time bf16 autocast against float32 on the first batch and keep the faster (`hf_lomdm.precision`); train
       with `LoMDMTrainer` (`accelerate launch` for several processes; `resume_from_checkpoint` to continue).
    4. Save model + tokenizer + generation config to `output_dir`, evaluate the validation NELBO / PPL bound and
       the context use (`hf_lomdm.evaluation.context_use`), print a few unconditional samples and a short report;
       write the model card.

Launch with `accelerate launch --config_file training/accelerate/<config>.yaml -m hf_lomdm.cli.train CONFIG.yaml`
for multi-process training.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PrinterCallback,
    ProgressCallback,
    set_seed,
)
from transformers.trainer_utils import TrainOutput, get_last_checkpoint
from transformers.utils import logging

from ..configuration_lomdm import LoMDMConfig
from ..data import (
    DEFAULT_SPECIAL_TOKENS,
    DataArguments,
    DataCollatorForMaskedDiffusion,
    group_texts,
    load_text_datasets,
    prompt_response_rows,
    tokenizer_config_kwargs,
    train_bpe_tokenizer,
    train_char_tokenizer,
)
from ..evaluation import ContextUseResult, context_use, unconditional_samples
from ..lora import lomdm_lora_config
from ..model_card import write_model_card
from ..modeling_lomdm import LoMDMForMaskedDiffusion
from ..precision import Bf16Calibration, calibrate_training_precision
from ..runtime import configure_threads
from ..trainer import LoMDMTrainer, LoMDMTrainingArguments
from ..trainer_logs import without_repeats
from ..units import bits, is_character_level
from .common import (
    run_cli,
)
from .recipe import ModelArguments, SampleArguments, architecture, parse_args, parse_recipe

logger = logging.get_logger(__name__)


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
    block_size: int,
) -> PreTrainedTokenizerBase:
    """The checkpoint's or model's tokenizer; else `tokenizer_name_or_path` (missing mask / pad / bos / eos
    tokens are added, e.g. to GPT-2's); else a byte-level BPE or character tokenizer trained on `texts`."""
    if checkpoint is not None or model_args.model_name_or_path is not None:
        return AutoTokenizer.from_pretrained(checkpoint or model_args.model_name_or_path)
    if model_args.tokenizer_name_or_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
        missing = {
            name: token for name, token in DEFAULT_SPECIAL_TOKENS.items() if getattr(tokenizer, name) is None
        }
        if missing:
            logger.info(f"Adding special tokens {missing} to {model_args.tokenizer_name_or_path}.")
            tokenizer.add_special_tokens(missing)
        return tokenizer
    # The local main process trains and saves it; the others wait and load the same files.
    with training_args.main_process_first(desc="training the tokenizer"):
        if training_args.local_process_index == 0:
            if model_args.tokenizer_type == "char":
                tokenizer = train_char_tokenizer(texts, model_max_length=block_size)
            else:
                tokenizer = train_bpe_tokenizer(
                    texts, vocab_size=model_args.tokenizer_vocab_size, model_max_length=block_size
                )
            tokenizer.save_pretrained(training_args.output_dir)
            return tokenizer
        return AutoTokenizer.from_pretrained(training_args.output_dir)


def _model(
    model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase, block_size: int
) -> LoMDMForMaskedDiffusion:
    """`model_name_or_path`, else a new model: every `LoMDMConfig` field set in `model_args`, the tokenizer's
    special ids and `block_size` positions (the other fields keep the config's defaults)."""
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
    config = LoMDMConfig(
        **tokenizer_config_kwargs(tokenizer), max_position_embeddings=block_size, **architecture(model_args)
    )
    config._attn_implementation = model_args.attn_implementation
    return LoMDMForMaskedDiffusion(config)


def _trainable_model(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase, block_size: int):
    """The model to train (`_model`, generating `block_size` tokens), in a LoRA adapter when `lora_r` is set."""
    model = _model(model_args, tokenizer, block_size)
    model.generation_config.max_length = block_size
    if model_args.lora_r is None:
        return model
    from peft import get_peft_model

    return get_peft_model(
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


def _token_rows(
    raw, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments, training_args: LoMDMTrainingArguments
) -> dict[str, Any]:
    """Step 2: the train and validation rows of `block_size` tokens (packed text, or prompt-response rows whose
    prompt is never noised), cut to `max_train_samples` / `max_eval_samples`."""
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
    return splits


def _calibrated_bf16(
    model, tokenizer: PreTrainedTokenizerBase, train_rows, args: LoMDMTrainingArguments
) -> Bf16Calibration:
    """`bf16: auto` on a CPU with bf16 units: time both precisions on the first training batch
    (`hf_lomdm.precision`) and set `args` to the choice. Every process times its own (under the load of the
    others); all follow the main process's choice."""
    rows = list(itertools.islice(iter(train_rows), args.per_device_train_batch_size))
    batch = DataCollatorForMaskedDiffusion(tokenizer.pad_token_id)(rows)
    calibration = calibrate_training_precision(model, {k: v.to(args.device) for k, v in batch.items()}, args)
    calibration = broadcast_object_list([calibration])[0]
    # What `TrainingArguments.__post_init__` derives from `bf16`; the Trainer's accelerator reads it.
    args.bf16, args.mixed_precision = calibration.use_bf16, "bf16" if calibration.use_bf16 else "no"
    return calibration


def _as_numbers(logs: dict[str, Any]) -> dict[str, Any]:
    """A log dict for the console: floats rounded to 4 significant digits but kept numbers (transformers'
    `ProgressCallback` / `PrinterCallback` print them as strings, `'loss': '1.725'`), each quantity once
    (`without_repeats`: no `eval_loss` beside `eval_nelbo`)."""
    return {
        key: float(f"{value:.4g}") if isinstance(value, float) else value
        for key, value in without_repeats(logs).items()
        if key != "total_flos"
    }


class _ProgressNumbers(ProgressCallback):
    """`ProgressCallback` whose log lines show numbers as numbers (`_as_numbers`)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(str(_as_numbers(logs or {})))


class _PrinterNumbers(PrinterCallback):
    """`PrinterCallback` (used with `disable_tqdm`) whose log lines show numbers as numbers (`_as_numbers`)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs is not None:
            print(_as_numbers(logs))


def _fit(
    model,
    tokenizer: PreTrainedTokenizerBase,
    splits: dict[str, Any],
    args: LoMDMTrainingArguments,
    checkpoint: str | None,
) -> tuple[LoMDMTrainer, TrainOutput]:
    """Step 3: train with `LoMDMTrainer` (resuming from `checkpoint`); returns the trainer and `TrainOutput`."""
    if args.include_num_input_tokens_seen == "no":
        args.include_num_input_tokens_seen = "non_padding"  # for the tokens/s of the report
    trainer = LoMDMTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=DataCollatorForMaskedDiffusion(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    for printer, replacement in ((ProgressCallback, _ProgressNumbers), (PrinterCallback, _PrinterNumbers)):
        if trainer.pop_callback(printer) is not None:
            trainer.add_callback(replacement)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    return trainer, train_result


def _save_and_evaluate(
    trainer: LoMDMTrainer,
    train_result: TrainOutput,
    threads: int | None,
    calibration: Bf16Calibration | None,
) -> dict[str, Any]:
    """Step 4 on every process: save model, tokenizer and state, evaluate the validation NELBO; the report."""
    trainer.save_model()
    trainer.save_state()
    eval_metrics = trainer.evaluate()
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    args = trainer.args
    return {
        "output_dir": args.output_dir,
        "steps": trainer.state.global_step,
        "train_runtime_s": train_result.metrics["train_runtime"],
        "train_tokens_per_second": trainer.state.num_input_tokens_seen
        / max(train_result.metrics["train_runtime"], 1e-9),
        "eval_nelbo": eval_metrics["eval_nelbo"],
        "eval_ppl_bound": eval_metrics["eval_ppl_bound"],
        "eval_tokens": eval_metrics["eval_tokens"],
        "eval_nelbo_stderr": eval_metrics["eval_nelbo_stderr"],
        "character_level": is_character_level(trainer.processing_class),
        "precision": calibration.precision if calibration else ("bf16 autocast" if args.bf16 else "float32"),
        "bf16_calibration": None if calibration is None else asdict(calibration),
        "cpu_threads": threads,
    }


def _context_and_samples(
    trainer: LoMDMTrainer, tokenizer: PreTrainedTokenizerBase, validation, sample_args: SampleArguments
) -> tuple[ContextUseResult, list[str]]:
    """Step 4 on the main process, with the evaluation (EMA) weights: the context use on `validation` and the
    unconditional samples."""
    seed = trainer.args.seed
    with trainer.evaluation_weights():
        # Does the denoiser use context? Loss of a token with all others visible vs with everything masked.
        context = context_use(trainer.model, validation, generator=torch.Generator().manual_seed(seed))
        samples = []
        if sample_args.sample_count:
            _, samples = unconditional_samples(
                trainer.model,
                tokenizer,
                sample_args.sample_count,
                seed=seed,
                steps=sample_args.sample_steps,
                temperature=sample_args.sample_temperature,
            )
    return context, samples


def _write_card(
    trainer: LoMDMTrainer,
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataArguments,
    report: dict[str, Any],
    context: ContextUseResult,
    samples: list[str],
) -> None:
    """The model card of `output_dir`, with the report's validation NELBO, the context use and the samples."""
    args = trainer.args
    write_model_card(
        args.output_dir,
        trainer.model,
        tokenizer,
        seed=args.seed,
        samples=samples,
        eval_metrics={
            "nelbo": report["eval_nelbo"],
            "ppl_bound": report["eval_ppl_bound"],
            "tokens": report["eval_tokens"],
            "stderr": report["eval_nelbo_stderr"],
        },
        context_use=context,
        eval_rows=trainer.eval_dataset,
        repo_id=args.hub_model_id or args.output_dir,
        precision=report["precision"],
        training_seconds=report["train_runtime_s"],
        dataset_name=data_args.dataset_name,
        training_data=f"`{data_args.dataset_name}`, {data_args.block_size}-token rows ({data_args.packing}), "
        f"{report['steps']} steps.",
    )


def _print_report(
    report: dict[str, Any], context: ContextUseResult, samples: list[str], eval_time_samples: int
) -> None:
    """The short report `lomdm-train` prints at the end."""
    threads = report["cpu_threads"]
    print(f"\nlomdm-train: saved model, tokenizer and generation config to {report['output_dir']}")
    print(
        f"  steps {report['steps']}, train {report['train_runtime_s']:.0f} s, "
        f"{report['train_tokens_per_second']:.0f} tokens/s, wall {report['wall_time_s']:.0f} s, "
        f"{report['precision']}" + (f", {threads} CPU thread(s)" if threads else "")
    )
    bits_per_char = ""
    if report["character_level"]:  # a token is a character
        bits_per_char = (
            f" = {bits(report['eval_nelbo']):.4f} ± {bits(report['eval_nelbo_stderr']):.4f} bits/char"
        )
    print(
        f"  validation: NELBO {report['eval_nelbo']:.4f} ± {report['eval_nelbo_stderr']:.4f} nats/token"
        f"{bits_per_char}, PPL bound {report['eval_ppl_bound']:.2f} ({report['eval_tokens']:.0f} tokens, "
        f"{eval_time_samples} time samples per sequence)"
    )
    losses = context.loss
    print(
        f"  context use: loss {losses['one']:.3f} nats/token with every other token visible, "
        f"{losses['all']:.3f} with everything masked (ratio {context.ratio:.2f}; ~1 = no context used)"
    )
    for i, text in enumerate(samples):
        print(f"--- sample {i} ---\n{text.strip()}")


def train(argv: list[str]) -> dict[str, Any]:
    """Run a recipe: `train(["CONFIG.yaml", "--key", "value"])`; returns the final report (also printed)."""
    model_args, data_args, training_args, sample_args, calibrate_bf16 = parse_recipe(argv)
    logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)
    threads = configure_threads() if training_args.device.type == "cpu" else None
    wall_start = time.time()

    # 1. Documents and tokenizer.
    checkpoint = _resume_checkpoint(training_args)
    raw = load_text_datasets(data_args, seed=training_args.seed)
    tokenizer = _tokenizer(
        model_args, training_args, raw["train"][data_args.text_column], checkpoint, data_args.block_size
    )
    # 2. Rows of tokens.
    splits = _token_rows(raw, tokenizer, data_args, training_args)
    # 3. Model and training.
    model = _trainable_model(model_args, tokenizer, data_args.block_size)
    calibration = (
        _calibrated_bf16(model, tokenizer, splits["train"], training_args) if calibrate_bf16 else None
    )
    trainer, train_result = _fit(model, tokenizer, splits, training_args, checkpoint)
    # 4. Save, evaluate, sample, report.
    report = _save_and_evaluate(trainer, train_result, threads, calibration)
    if trainer.is_world_process_zero():
        context, samples = _context_and_samples(trainer, tokenizer, splits["validation"], sample_args)
        report["context_use"] = context.to_dict()
        if model_args.lora_r is None:  # an adapter folder gets PEFT's own card
            _write_card(trainer, tokenizer, data_args, report, context, samples)
        report["wall_time_s"] = time.time() - wall_start
        _print_report(report, context, samples, training_args.eval_time_samples)
    return report


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lomdm-train` console script: bad input exits with status 2 and one line on stderr
    (`--debug` without a value, or `LOMDM_DEBUG=1`, for the traceback; see `hf_lomdm.cli.common`)."""
    run_cli("lomdm-train", train, argv)


if __name__ == "__main__":
    main()


__all__ = ["ModelArguments", "SampleArguments", "main", "parse_args", "train"]
