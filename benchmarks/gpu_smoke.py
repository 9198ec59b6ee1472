"""The first run on a GPU, in about 5 minutes and with nothing downloaded: do training, multi-GPU training,
generation and the throughput benchmark work here, and how fast are they?

    python benchmarks/gpu_smoke.py                       # writes benchmarks/results/gpu_smoke.json
    python benchmarks/gpu_smoke.py --device cpu --quick  # the same code as a dry run on a CPU (seconds)

Stages; each one's numbers or its error are recorded, so one failure does not hide the others:

1. `train`: the 4 x 256 LoMDM (hidden 256, 4 layers, `schedule="lomdm"`, SDPA attention) on the built-in
   Shakespeare plays (character tokenizer, 256-character rows), `--steps` `LoMDMTrainer` steps with bf16 autocast
   where the device supports it; validation NELBO before and after, training tokens/s.
2. `ddp`, `fsdp` (2 or more GPUs): stage 1 on every GPU, launched with `accelerate launch --config_file
   training/accelerate/{multi_gpu,fsdp}.yaml`; the same numbers.
3. `generate`: 4 samples with every order of `hf_lomdm.generation_config_lomdm.ORDERS` (`block_size / 4` steps),
   tokens/s and the share of samples with no mask token left.
4. `throughput`: `benchmarks/throughput.py --device DEVICE` (LoMDM, BERT, ModernBERT at two sizes, float32 and
   bf16), its Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from transformers.utils import logging

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.data import (
    DataCollatorForMaskedDiffusion,
    group_texts,
    load_shakespeare,
    tokenizer_config_kwargs,
    train_char_tokenizer,
)
from hf_lomdm.generation_config_lomdm import ORDERS
from hf_lomdm.runtime import has_fast_bf16
from hf_lomdm.trainer import LoMDMTrainer, LoMDMTrainingArguments

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results" / "gpu_smoke.json"


def settings(args: argparse.Namespace) -> dict[str, int]:
    if args.quick:
        return {"steps": 3, "batch": 4, "block_size": 64, "eval_rows": 8}
    return {"steps": args.steps, "batch": 32, "block_size": 256, "eval_rows": 256}


def train_stage(args: argparse.Namespace, name: str) -> tuple[dict, LoMDMForMaskedDiffusion, object]:
    """Stage 1 in this process (or in every process of an `accelerate launch`)."""
    run = settings(args)
    plays = load_shakespeare()
    tokenizer = train_char_tokenizer(plays["train"]["text"], model_max_length=run["block_size"])
    train = group_texts(plays["train"], tokenizer, run["block_size"])
    validation = group_texts(plays["validation"], tokenizer, run["block_size"])
    validation = validation.select(range(min(run["eval_rows"], len(validation))))
    config = LoMDMConfig(
        **tokenizer_config_kwargs(tokenizer),
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=768,
        scheduler_intermediate_size=512,
        scheduler_head_size=128,
        max_position_embeddings=run["block_size"],
    )
    config._attn_implementation = "sdpa"
    device = torch.device(args.device)
    bf16 = has_fast_bf16(device)
    training_args = LoMDMTrainingArguments(
        output_dir=str(Path(args.output).parent / f"gpu_smoke_{name}"),
        max_steps=run["steps"],
        per_device_train_batch_size=run["batch"],
        per_device_eval_batch_size=run["batch"],
        learning_rate=1e-3,
        warmup_steps=min(20, run["steps"] // 10),
        bf16=bf16,
        use_cpu=device.type == "cpu",
        dataloader_pin_memory=device.type == "cuda",
        include_num_input_tokens_seen="non_padding",
        logging_steps=max(1, run["steps"] // 5),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = LoMDMTrainer(
        model=LoMDMForMaskedDiffusion(config),
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorForMaskedDiffusion(tokenizer.pad_token_id),
    )
    before = trainer.evaluate()["eval_nelbo"]
    result = trainer.train()
    after = trainer.evaluate()["eval_nelbo"]
    record = {
        "processes": trainer.args.world_size,
        "fsdp": trainer.is_fsdp_enabled,
        "precision": "bf16 autocast" if bf16 else "float32",
        "attention": config._attn_implementation,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "steps": trainer.state.global_step,
        "global_batch": run["batch"] * trainer.args.world_size,
        "block_size": run["block_size"],
        "train_seconds": result.metrics["train_runtime"],
        "tokens_per_second": trainer.state.num_input_tokens_seen / result.metrics["train_runtime"],
        "eval_nelbo_before": before,
        "eval_nelbo_after": after,
    }
    if trainer.is_world_process_zero():
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / "record.json").write_text(json.dumps(record, indent=2))
    return record, trainer.model, tokenizer


def launched_stage(args: argparse.Namespace, name: str, config: str) -> dict:
    """Stage 2: `train_stage` on every visible GPU through `accelerate launch`."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = [accelerate, "launch", "--config_file", str(ROOT / "training" / "accelerate" / config)]
    command += ["--num_processes", str(torch.cuda.device_count()), __file__, "--stage", name]
    command += ["--device", "cuda", "--steps", str(args.steps), "--output", args.output]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads((Path(args.output).parent / f"gpu_smoke_{name}" / "record.json").read_text())


def generate_stage(model: LoMDMForMaskedDiffusion, tokenizer, block_size: int) -> dict:
    model.eval()
    prompt = torch.full((4, 1), tokenizer.bos_token_id, dtype=torch.long, device=model.device)
    records = {}
    for order in ORDERS:
        try:
            generator = torch.Generator(device=model.device).manual_seed(0)
            start = time.perf_counter()
            with torch.no_grad():
                sequences = model.generate(
                    prompt, max_length=block_size, steps=block_size // 4, order=order, generator=generator
                )
            seconds = time.perf_counter() - start
            finished = (sequences != tokenizer.mask_token_id).all(-1).float().mean().item()
            records[order] = {
                "tokens_per_second": sequences.numel() / seconds,
                "finished_fraction": finished,
                "sample": tokenizer.decode(sequences[0], skip_special_tokens=True)[:120],
            }
        except Exception as error:  # noqa: BLE001 - a smoke run records every order's failure
            records[order] = {"error": f"{type(error).__name__}: {error}"}
    return {"orders": records}


def throughput_stage(args: argparse.Namespace) -> dict:
    output = Path(args.output).parent / "gpu_smoke_throughput"
    command = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--device", args.device]
    command += ["--output", str(output)]
    command += (
        ["--sizes", "main", "--kinds", "mdlm", "lomdm", "--rounds", "1", "--steps", "1"] if args.quick else []
    )
    command += [] if args.quick else ["--rounds", "3", "--steps", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return {"table": output.with_suffix(".md").read_text()}


def run_stage(records: dict, name: str, function, *arguments):
    start = time.perf_counter()
    try:
        value = function(*arguments)
    except Exception:  # noqa: BLE001 - a smoke run records the failure and goes on
        records[name] = {"error": traceback.format_exc(limit=4)}
        value = None
    else:
        records[name] = value[0] if isinstance(value, tuple) else value
    records[name]["wall_seconds"] = time.perf_counter() - start
    print(f"[gpu_smoke] {name}: {json.dumps(records[name])[:400]}", flush=True)
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=300, help="training steps of stage 1 (and 2)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a dry run of the code")
    parser.add_argument("--stage", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)  # set by stage 2's launch
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    logging.set_verbosity_error()
    if args.stage is not None:
        train_stage(args, args.stage)
        return
    records: dict = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "visible_gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
    }
    trained = run_stage(records, "train", train_stage, args, "train")
    if args.device.startswith("cuda") and torch.cuda.device_count() > 1:
        run_stage(records, "ddp", launched_stage, args, "ddp", "multi_gpu.yaml")
        run_stage(records, "fsdp", launched_stage, args, "fsdp", "fsdp.yaml")
    else:
        records["ddp"] = records["fsdp"] = {"skipped": "fewer than 2 GPUs visible"}
    if trained is not None:
        _, model, tokenizer = trained
        run_stage(records, "generate", generate_stage, model, tokenizer, settings(args)["block_size"])
    run_stage(records, "throughput", throughput_stage, args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(records, indent=2) + "\n")
    failed = [name for name, record in records.items() if isinstance(record, dict) and "error" in record]
    failed += [
        f"generate/{order}"
        for order, record in records.get("generate", {}).get("orders", {}).items()
        if "error" in record
    ]
    print(f"[gpu_smoke] wrote {output}; failed stages: {failed or 'none'}")
    if "table" in records.get("throughput", {}):
        print(records["throughput"]["table"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
