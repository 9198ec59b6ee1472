"""Training throughput of LoMDM against BERT and ModernBERT of the same dimensions, side by side in one process.

    python benchmarks/throughput.py                      # main-job size and ~4x larger, ~10 min on one core
    python benchmarks/throughput.py --rounds 2 --steps 2 # quick look
    python benchmarks/throughput.py --device cuda        # on a GPU (bf16 rows where it supports bf16)

For each model size, interleaved rounds (every configuration once per round, medians over rounds) of `--steps`
AdamW steps on random token rows of `--length` tokens:

- `mdlm`: LoMDM with `schedule="linear"`, K = 1, the plain estimator and MDLM's time rule (the MDLM loss);
- `lomdm`: LoMDM with K = 2 RLOO (`schedule="lomdm"`, importance-sampled times): a no-grad clean pass for f(x)
  plus two noisy passes;
- `lomdm_tcv1`: LoMDM with the token control variate and K = 1 (`estimator="tcv"`): the clean pass plus one
  noisy pass;
- `mdlm_compiled` (opt-in: `--kinds mdlm mdlm_compiled modernbert`): `mdlm` with the backbone compiled in place
  (`model.model.compile()`: inductor's C++ kernels on CPU; needs a C++ compiler; compiling takes minutes and is
  not timed). In place, so the parameter names (and a saved checkpoint) stay those of the eager model;
- `mdlm_compiled_model` (opt-in): `mdlm` with the whole model compiled as `TrainingArguments(torch_compile=True)`
  does through accelerate (`torch.compile(model)`, dynamic shapes allowed: the masked-only head gathers a
  data-dependent number of rows, and the input checks break the graph);
- `bert`, `modernbert`: `BertForMaskedLM` / `ModernBertForMaskedLM` (its `sparse_prediction` head, like our
  masked-only head) of the same width, depth, heads and feed-forward width, trained with the same MDLM loss
  written out here (t ~ U(eps, 1), mask with probability t, cross-entropy of the masked tokens weighted 1/t).

Reported per configuration: training tokens/s, ratios to `mdlm` / `bert` / `modernbert` of the same round
(the machine is shared: ratios measured side by side are what to read; bf16 rows also give the ratio to float32
of the same rounds), model FLOPs per step (counted with `torch.utils.flop_counter` on one step), model FLOPs
utilisation against a measured float32 matmul peak, and the activation memory one step saves for backward
(bytes of tensors saved by autograd; `benchmarks/memory.py` measures allocator bytes, with and without gradient
checkpointing). Precisions (`--precisions`): float32, and bf16
autocast where the CPU has bf16 matrix units (`hf_lomdm.runtime.has_fast_bf16`).
Writes `benchmarks/results/throughput.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.objective import lomdm_loss
from hf_lomdm.runtime import configure_threads, has_fast_bf16

RESULTS = Path(__file__).parent / "results" / "throughput"
MASK_ID, VOCAB = 0, 96  # the main job's character vocabulary is ~90 ids
SIZES = {  # name: (hidden, layers, heads, feed-forward); "main" is the main job's backbone
    "main": (128, 4, 4, 384),
    "4x": (256, 4, 4, 768),
}


def build(kind: str, hidden: int, layers: int, heads: int, ffn: int, length: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mdlm_compiled":
        model = build("mdlm", hidden, layers, heads, ffn, length)
        # The backbone only: its shapes are fixed; the masked-only head gathers a data-dependent number of rows.
        model.model.compile(dynamic=False)
        return model
    if kind == "mdlm_compiled_model":
        return torch.compile(build("mdlm", hidden, layers, heads, ffn, length))
    if kind in ("mdlm", "lomdm", "lomdm_tcv1"):
        config = LoMDMConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=length,
            mask_token_id=MASK_ID,
            schedule="linear" if kind == "mdlm" else "lomdm",
            scheduler_intermediate_size=2 * hidden,
            scheduler_head_size=hidden // 2,
        )
        return LoMDMForMaskedDiffusion(config)
    if kind == "bert":
        return BertForMaskedLM(
            BertConfig(
                vocab_size=VOCAB,
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=ffn,
                max_position_embeddings=length,
                attn_implementation="sdpa",
            )
        )
    return ModernBertForMaskedLM(
        ModernBertConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=length,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
            sparse_prediction=True,
            attn_implementation="sdpa",
        )
    )


def mdlm_loss_for_mlm(model, x: torch.Tensor, generator: torch.Generator, eps: float = 1e-3) -> torch.Tensor:
    """MDLM's loss for a BERT-style masked LM: per-token cross-entropy of masked tokens weighted 1/t."""
    t = eps + (1 - eps) * torch.rand(x.shape[0], 1, generator=generator, device=x.device)
    masked = torch.rand(x.shape, generator=generator, device=x.device) < t
    labels = torch.where(masked, x, torch.full_like(x, -100))
    logits = model(input_ids=x.masked_fill(masked, MASK_ID), labels=labels).logits
    if logits.dim() == 3:  # BERT: every position; ModernBERT with sparse_prediction: only the labelled ones
        logits = logits[masked]
    nll = F.cross_entropy(logits.float(), x[masked], reduction="none")
    weights = (1 / t).expand_as(x)[masked]
    return (nll * weights).sum() / x.numel()


def loss_fn(kind: str):
    if kind in ("mdlm", "mdlm_compiled", "mdlm_compiled_model"):
        return lambda model, x, g: (
            lomdm_loss(
                model, x, num_samples=1, estimator="plain", time_sampling="uniform_eps", generator=g
            ).loss
        )
    if kind == "lomdm":  # K = 2 RLOO
        return lambda model, x, g: lomdm_loss(model, x, num_samples=2, estimator="rloo", generator=g).loss
    if kind == "lomdm_tcv1":  # one noisy pass: the token control variate with K = 1
        return lambda model, x, g: lomdm_loss(model, x, num_samples=1, estimator="tcv", generator=g).loss
    return mdlm_loss_for_mlm


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times measure it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int = 512, seconds: float = 2.0) -> float:
    """Measured float32 matmul FLOP/s on `device` (this process's threads on a CPU; best of repeated products)."""
    if device.type == "cuda":
        size = 4096  # a GPU needs large products to reach its peak
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        synchronize(device)
        tick = time.perf_counter()
        for _ in range(10):
            a @ b
        synchronize(device)
        best = max(best, 10 * 2 * size**3 / (time.perf_counter() - tick))
    return best


def step_flops_and_activations(model, loss, x, generator) -> tuple[float, int]:
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with (
        FlopCounterMode(display=False) as counter,
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        value = loss(model, x, generator)
    activation_bytes = sum(saved)
    with FlopCounterMode(display=False) as backward_counter:
        value.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops() + backward_counter.get_total_flops()), activation_bytes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["mdlm", "lomdm", "bert", "modernbert"],
        choices=["mdlm", "mdlm_compiled", "mdlm_compiled_model", "lomdm", "lomdm_tcv1", "bert", "modernbert"],
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--steps", type=int, default=4, help="timed optimizer steps per configuration and round"
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["float32", "bf16"],
        help="default: float32, and bf16 autocast where the CPU has bf16 matrix units",
    )
    parser.add_argument("--device", default="cpu", help="'cpu' or a CUDA device ('cuda', 'cuda:1')")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    threads = configure_threads()
    if args.precisions is None:
        args.precisions = ["float32"] + (["bf16"] if has_fast_bf16(device) else [])
    precisions = ["bf16 autocast" if p == "bf16" else p for p in args.precisions]
    peak = matmul_peak(device)
    x = torch.randint(4, VOCAB, (args.batch, args.length), generator=torch.Generator().manual_seed(0)).to(
        device
    )
    rows = []
    for size in args.sizes:
        dims = SIZES[size]
        setups = {}
        for kind in args.kinds:
            model = build(kind, *dims, args.length).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            counted = (
                build("mdlm", *dims, args.length).to(device).train()
                if kind.startswith("mdlm_compiled")
                else model
            )  # same work
            flops, activations = step_flops_and_activations(
                counted, loss_fn(kind), x, torch.Generator(device).manual_seed(0)
            )
            setups[kind] = (model, optimizer, flops, activations)
        # Every (precision, kind) once per round: load that changes over time hits all settings alike.
        times = {(precision, kind): [] for precision in precisions for kind in args.kinds}
        for round_ in range(args.rounds + 1):  # round 0 warms up (allocator, kernels) and is not counted
            for precision, kind in times:
                model, optimizer, _, _ = setups[kind]
                generator = torch.Generator(device).manual_seed(round_)
                synchronize(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision != "float32"):
                        loss = loss_fn(kind)(model, x, generator)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                synchronize(device)
                if round_:
                    times[precision, kind].append((time.perf_counter() - start) / args.steps)
        tokens = args.batch * args.length
        for precision in precisions:
            for kind, (model, _, flops, activations) in setups.items():
                own = times[precision, kind]
                per_step = statistics.median(own)
                ratios = {
                    f"vs_{other}": statistics.median(o / t for o, t in zip(times[precision, other], own))
                    for other in ("mdlm", "bert", "modernbert")
                    if other in args.kinds and other != kind
                }
                if precision != "float32" and "float32" in precisions:
                    ratios["vs_float32"] = statistics.median(
                        o / t for o, t in zip(times["float32", kind], own)
                    )
                rows.append(
                    {
                        "size": size,
                        "dims": dict(zip(("hidden", "layers", "heads", "ffn"), dims)),
                        "kind": kind,
                        "precision": precision,
                        "tokens_per_second": tokens / per_step,
                        "seconds_per_step": per_step,
                        "parameters": sum(p.numel() for p in model.parameters()),
                        "flops_per_step": flops,
                        "mfu": flops / per_step / peak,
                        "activation_mib": activations / 2**20,
                        **ratios,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    report = {
        "settings": vars(args),
        "threads": threads,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "matmul_peak_gflops": peak / 1e9,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [
        f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s, {threads} thread(s), batch {args.batch} x {args.length} "
        f"tokens, medians of {args.rounds} interleaved rounds of {args.steps} steps",
        "",
        "| size | model | precision | tokens/s | vs mdlm | vs bert | vs modernbert | vs float32 | GFLOP/step | MFU | "
        "activations (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = [
            f"{r[k]:.2f}" if k in r else "" for k in ("vs_mdlm", "vs_bert", "vs_modernbert", "vs_float32")
        ]
        lines.append(
            f"| {r['size']} | {r['kind']} | {r['precision']} | {r['tokens_per_second']:.0f} | "
            + " | ".join(ratio)
            + f" | {r['flops_per_step'] / 1e9:.1f} | {r['mfu']:.2f} | "
            f"{r['activation_mib']:.0f} |"
        )
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
