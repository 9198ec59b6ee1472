"""Sampling speed of LoMDM's `generate` against `LlamaForCausalLM.generate` (KV cache), same width and depth.

    python benchmarks/sampling.py --threads 1            # full grid: hours on 2 shared CPU cores
    python benchmarks/sampling.py --threads 1 --resume   # go on after a stop (the JSON is rewritten per row)
    python benchmarks/sampling.py --quick                # 32 new tokens, batch 1 and 4

Prints a table and writes benchmarks/results/sampling.json: tokens/s and nfe for every order, with and without
the cache, steps in {L/4, L, 4L} (plus the exact sampler, threshold decoding and steps = 1000 for the cache
target), batch 1 and 16, L = 128 new tokens after a 16-token prompt. Both models have random weights: the
numbers measure speed only (an untrained denoiser is never confident, so threshold decoding reveals about one
token per pass here; a trained model reveals several).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.runtime import configure_threads

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="32 new tokens, batch 1 and 4")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument(
    "--threads",
    type=int,
    default=None,
    help="torch CPU threads (default: hf_lomdm.runtime's choice: 1 on <= 2 cores unless OMP_NUM_THREADS is set)",
)
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "sampling.json")
parser.add_argument(
    "--resume", action="store_true", help="keep the rows already in --output, measure the others"
)
args = parser.parse_args()
if args.threads is not None:
    torch.set_num_threads(args.threads)
else:
    configure_threads()
device = torch.device(args.device)

new_tokens = 32 if args.quick else 128
batches = (1, 4) if args.quick else (1, 16)
prompt_length = 16
width = {
    "vocab_size": 8192,
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "intermediate_size": 688,
    "max_position_embeddings": 1024,
}

torch.manual_seed(0)
diffusion = LoMDMForMaskedDiffusion(
    LoMDMConfig(**width, mask_token_id=0, pad_token_id=1, schedule="lomdm")
).to(device)
llama = LlamaForCausalLM(
    LlamaConfig(**width, num_key_value_heads=4, pad_token_id=1, bos_token_id=None, eos_token_id=None)
).to(device)
diffusion.eval()
llama.eval()
backbone_calls = [0]
diffusion.model.register_forward_pre_hook(lambda *_: backbone_calls.__setitem__(0, backbone_calls[0] + 1))


def timed(fn) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def prompt(batch: int) -> torch.Tensor:
    return torch.randint(
        2, width["vocab_size"], (batch, prompt_length), generator=torch.Generator().manual_seed(0)
    ).to(device)


def run_ar(batch: int) -> dict:
    ids = prompt(batch)
    seconds, out = timed(
        lambda: llama.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=True,
            top_k=0,
            use_cache=True,
        )
    )
    assert out.shape[1] == prompt_length + new_tokens
    return {
        "model": "llama-ar",
        "order": "causal",
        "steps": new_tokens,
        "cache": True,
        "batch": batch,
        "nfe": new_tokens,
        "calls": new_tokens,
        "seconds": seconds,
        "tokens_per_s": batch * new_tokens / seconds,
    }


def run_diffusion(batch: int, order: str, steps: int | None, cache: bool, **extra) -> dict:
    ids = prompt(batch)
    backbone_calls[0] = 0
    seconds, out = timed(
        lambda: diffusion.generate(
            ids,
            max_new_tokens=new_tokens,
            steps=steps,
            order=order,
            use_cache=cache,
            eos_token_id=[],
            return_dict_in_generate=True,
            generator=torch.Generator(device).manual_seed(0),
            **extra,
        )
    )
    label = order + ("+threshold" if "threshold" in extra else "")
    return {
        "model": "lomdm",
        "order": label,
        "steps": steps,
        "cache": cache,
        "batch": batch,
        "nfe": out.nfe.float().mean().item(),
        "calls": backbone_calls[0],
        "seconds": seconds,
        "tokens_per_s": batch * new_tokens / seconds,
    }


# Warm up both models (allocator, kernels) before timing.
run_ar(1)
run_diffusion(1, "confidence", 4, True)

L = new_tokens
configs = []
for order in ("learned", "random", "confidence", "margin", "entropy", "left_to_right"):
    step_choices = (None, L // 4, L, 4 * L) if order in ("learned", "random") else (L // 4, L, 4 * L)
    for steps in step_choices:
        for cache in (True, False):
            configs.append({"order": order, "steps": steps, "cache": cache})
configs.append({"order": "confidence", "steps": None, "cache": True, "threshold": 0.9})
meta = {
    "quick": args.quick,
    "device": str(device),
    "threads": torch.get_num_threads(),
    "cpu_count": os.cpu_count(),
    "torch": torch.__version__,
    "platform": platform.platform(),
    "new_tokens": new_tokens,
    "prompt_length": prompt_length,
    "parameters_lomdm": sum(p.numel() for p in diffusion.parameters()),
    "parameters_llama": sum(p.numel() for p in llama.parameters()),
    "weights": "random init (speed only)",
}


def summarize(rows: list[dict]) -> dict:
    """Speed relative to the AR model at the same batch, and the two targets (when measured)."""
    ar_speed = {row["batch"]: row["tokens_per_s"] for row in rows if row["model"] == "llama-ar"}
    for row in rows:
        row["vs_ar"] = row["tokens_per_s"] / ar_speed[row["batch"]]
    nfe_1000 = {(row["order"], row["cache"]): row["nfe"] for row in rows if row["steps"] == 1000}
    summary = {
        f"cache_pass_reduction_steps1000_{order}": nfe_1000[order, False] / nfe_1000[order, True]
        for order in ("learned", "random")
        if (order, True) in nfe_1000 and (order, False) in nfe_1000
    }
    for row in rows:
        if row["order"] == "confidence+threshold":
            summary[f"threshold_vs_ar_tokens_per_s_batch{row['batch']}"] = row["vs_ar"]
    return summary


def save(rows: list[dict]) -> dict:
    """Rewrite the JSON after every measurement, so a long run that is stopped keeps what it measured."""
    summary = summarize(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=2) + "\n")
    return summary


def key(row: dict) -> tuple:
    return row["model"], row["order"], row["steps"], row["cache"], row["batch"]


# Batch 1, then the cache target (steps = 1000 on the 128-token canvas, batch 1), then the larger batch with
# the cached runs first (the uncached ones at 4L steps are the slowest of the grid).
plan = [(1, config) for config in configs]
plan += [
    (1, {"order": order, "steps": 1000, "cache": cache})
    for order in ("learned", "random")
    for cache in (True, False)
]
plan += [(batches[1], config) for config in sorted(configs, key=lambda config: not config["cache"])]
rows = json.loads(args.output.read_text())["rows"] if args.resume and args.output.exists() else []
for batch, config in plan:
    if not any(row["model"] == "llama-ar" and row["batch"] == batch for row in rows):
        rows.append(run_ar(batch))
    label = config["order"] + ("+threshold" if "threshold" in config else "")
    if ("lomdm", label, config["steps"], config["cache"], batch) in {key(row) for row in rows}:
        continue
    rows.append(run_diffusion(batch, **config))
    save(rows)
    print(f"measured batch={batch} {config}: {rows[-1]['tokens_per_s']:.1f} tok/s", flush=True)
summary = save(rows)

header = (
    f"{'model':9s} {'order':21s} {'steps':>5s} {'cache':>5s} {'batch':>5s} {'nfe':>7s} {'calls':>6s} "
    f"{'seconds':>8s} {'tok/s':>9s} {'vs AR':>6s}"
)
print(header)
print("-" * len(header))
for row in rows:
    print(
        f"{row['model']:9s} {row['order']:21s} {row['steps']!s:>5s} {row['cache']!s:>5s} {row['batch']:5d} "
        f"{row['nfe']:7.1f} {row['calls']:6d} {row['seconds']:8.2f} {row['tokens_per_s']:9.1f} "
        f"{row['vs_ar']:6.2f}"
    )
print(json.dumps(summary, indent=2))
print(f"wrote {args.output}")
