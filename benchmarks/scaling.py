"""Scale on paper: a FLOPs-per-token model of a training step, checked against this CPU at three sizes, and the
projected GPU cost of the paper's runs and of adapting causal LMs.

    python benchmarks/scaling.py                        # measure 3 sizes (~3 min on one core), then project
    python benchmarks/scaling.py --skip-measure         # projections only (reuses no measurement)
    python benchmarks/scaling.py --adapt-tokens 5e9 --mfu 0.35 0.45

FLOPs model (`step_flops_per_token`, per token of a training row; matmuls and attention only). One backbone
layer costs, per token, 2 FLOPs per matmul weight (q, k, v, o, and SwiGLU's gate, up, down) plus 4·L·d for
attention over L keys (QKᵀ and AV); the head costs 2·d·V at each *masked* position only (the masked-only head; a
fraction m of the row, 0.5 by default). A pass with gradients costs 3 forward passes (backward = 2x forward);
with LoRA only 2 (activation gradients, no gradients for the frozen weights).

- MDLM mode (`schedule="linear"`, K = 1): one noisy pass with gradients.
- LoMDM mode (K = 2 + the clean pass): the backbone once on the clean row without gradients (f(x)), the forward
  scheduler g_φ on it with gradients, then K noisy passes with gradients, each with the reverse scheduler g_ψ.
  A scheduler is one backbone-shaped layer (its own feed-forward width) and a small head.

Measured here (`--sizes`, float32, batch x length tokens, reusing `throughput.py` and `memory.py`): tokens/s, the
FLOPs `FlopCounterMode` counts for one step, the peak tensor memory of one step, and the achieved MFU =
predicted FLOPs/s over the measured float32 matmul rate. The counter does not count CPU flash attention, so the
check of the model is counted / predicted-without-attention (1.000 means the weight matmuls and the masked-only
head are exactly as modelled); the MFU uses the full prediction.

Projected: the paper's runs (12 x 768, 1M steps of 512 rows of 128 (LM1B) and 1024 (OWT) tokens) and adapting
SmolLM2-135M and TinyLlama-1.1B (a Llama 2 architecture without RoPE scaling, so `from_causal_lm` converts it)
on `--adapt-tokens` tokens, in full and with LoRA, on 1 and 8 GPUs of each `--gpus` kind. Assumptions are
written into the output: the MFU range (`--mfu`), the scaling efficiency from 1 to 8 GPUs (`--efficiency-8`),
the masked fraction, dense bf16 peaks from NVIDIA's datasheets; the memory column is weights, gradients and Adam
state only. Writes `benchmarks/results/scaling.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "scaling"

# Dense bf16 tensor-core peaks (no sparsity), from NVIDIA's H100 SXM and A100 SXM datasheets.
GPU_PEAK_FLOPS = {"H100-SXM": 989e12, "A100-SXM": 312e12}
MFU_SOURCE = (
    "PaLM (Chowdhery et al. 2022, arXiv:2204.02311, Table 3) reports 46.2% MFU for PaLM 540B and 21.3% / 30.2% "
    "for GPT-3 175B / Megatron-Turing NLG 530B; Megatron-LM (Narayanan et al. 2021, arXiv:2104.04473) reaches "
    "52% of A100 peak at 1T parameters. Models of 0.1-1B parameters have smaller matmuls and reach less: the "
    "range assumed here is a judgement from those numbers, not a measurement of this package on a GPU."
)


@dataclass(frozen=True)
class Architecture:
    """A LoMDM backbone (Llama layout, SwiGLU) and its two learned schedulers (one layer each)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    scheduler_ffn: int
    scheduler_head: int
    tied_embeddings: bool = False

    @property
    def parameters(self) -> int:
        """N: the backbone's matmul weights, the input embedding and the head (one matrix when tied); no norms,
        no schedulers."""
        embeddings = (1 if self.tied_embeddings else 2) * self.vocab * self.hidden
        return self.layers * _layer_weights(self, self.ffn) + embeddings

    @property
    def scheduler_parameters(self) -> int:
        """The matmul weights of the two learned schedulers (LoMDM mode only)."""
        return 2 * (
            _layer_weights(self, self.scheduler_ffn) + self.hidden * self.scheduler_head + self.scheduler_head
        )


@dataclass(frozen=True)
class Mode:
    """What one training step runs: K noisy passes with gradients, and for LoMDM the clean pass + schedulers."""

    name: str
    noisy_passes: int
    clean_pass: bool


MODES = {"mdlm": Mode("mdlm", 1, False), "lomdm": Mode("lomdm", 2, True)}


def _layer_weights(arch: Architecture, ffn: int) -> int:
    kv = arch.hidden * arch.kv_heads // arch.heads
    return 2 * arch.hidden * arch.hidden + 2 * arch.hidden * kv + 3 * arch.hidden * ffn


def _layer_flops(arch: Architecture, ffn: int, length: int, attention: bool) -> float:
    """Forward FLOPs per token of one layer: its matmul weights and (with `attention`) attention over `length`
    keys."""
    return 2 * _layer_weights(arch, ffn) + (4 * length * arch.hidden if attention else 0)


def step_flops_per_token(
    arch: Architecture,
    length: int,
    mode: Mode,
    masked_fraction: float = 0.5,
    lora: bool = False,
    attention: bool = True,
) -> float:
    """FLOPs of one training step per token of a row of `length` tokens (see the module docstring);
    `attention=False` leaves out QKᵀ and AV (the weight matmuls only)."""
    grad = 2.0 if lora else 3.0  # forward + backward; LoRA computes no gradient for the frozen weights
    backbone = arch.layers * _layer_flops(arch, arch.ffn, length, attention)
    head = 2 * arch.hidden * arch.vocab * masked_fraction
    total = mode.noisy_passes * grad * (backbone + head)
    if mode.clean_pass:  # the schedulers train in full, also under LoRA
        scheduler = 3.0 * (
            _layer_flops(arch, arch.scheduler_ffn, length, attention) + 2 * arch.hidden * arch.scheduler_head
        )
        total += (
            backbone + scheduler + mode.noisy_passes * scheduler
        )  # f(x) without gradients + g_φ; g_ψ per sample
    return total


def gpu_hours(total_flops: float, peak_flops: float, mfu: float) -> float:
    """GPU-hours of `total_flops` at `mfu` of `peak_flops` per GPU."""
    if not 0 < mfu <= 1:
        raise ValueError(f"`mfu` must be in (0, 1], got {mfu}.")
    return total_flops / (peak_flops * mfu) / 3600


def wall_hours(total_flops: float, peak_flops: float, mfu: float, gpus: int, efficiency: float) -> float:
    """Wall-clock hours on `gpus` GPUs that each reach `efficiency` of the one-GPU rate."""
    if gpus < 1 or not 0 < efficiency <= 1:
        raise ValueError(f"need gpus >= 1 and efficiency in (0, 1], got {gpus}, {efficiency}.")
    return gpu_hours(total_flops, peak_flops, mfu) / (gpus * efficiency)


# The paper's 12 x 768 backbone as `training/configs/{lm1b,owt}-small.yaml` build it (SwiGLU 3072, schedulers at
# the config's defaults: the backbone's feed-forward and hidden width), with the data sets' tokenizers.
PAPER_RUNS = {
    "LM1B 12x768": (Architecture(768, 12, 12, 12, 3072, 30522, 3072, 768), 128),
    "OWT 12x768": (Architecture(768, 12, 12, 12, 3072, 50258, 3072, 768), 1024),
}
PAPER_STEPS, PAPER_BATCH = 1_000_000, 512
# Causal LMs as `from_causal_lm` converts them (one mask token added; schedulers at the config defaults).
CAUSAL_LMS = {
    "SmolLM2-135M": Architecture(576, 30, 9, 3, 1536, 49153, 1536, 576, tied_embeddings=True),
    "TinyLlama-1.1B": Architecture(2048, 22, 32, 4, 5632, 32001, 5632, 2048),
}
# Measured on this CPU: (layers, hidden); heads of 32 dimensions, feed-forward 3 x hidden, as `throughput.py`.
CPU_SIZES = {"2x64": (2, 64), "4x128": (4, 128), "8x256": (8, 256)}


def cpu_architecture(layers: int, hidden: int, vocab: int) -> Architecture:
    """The architecture `throughput.build` makes for these dimensions (schedulers 2 x hidden wide, head hidden/2)."""
    return Architecture(
        hidden, layers, hidden // 32, hidden // 32, 3 * hidden, vocab, 2 * hidden, hidden // 2
    )


def _state_bytes(arch: Architecture, mode: Mode, lora: bool) -> float:
    """Bytes of fp32 weights, gradients and Adam moments (16 per trained parameter, 4 per frozen one)."""
    schedulers = arch.scheduler_parameters if mode.clean_pass else 0
    return (4 if lora else 16) * arch.parameters + 16 * schedulers


def project(args: argparse.Namespace) -> list[dict]:
    """One row per (run, mode, LoRA) with its total FLOPs and GPU-hours / wall hours at both ends of the MFU range."""
    runs = [
        (name, arch, length, PAPER_STEPS * PAPER_BATCH * length, False)
        for name, (arch, length) in PAPER_RUNS.items()
    ]
    for name, arch in CAUSAL_LMS.items():
        for lora in (False, True):
            runs.append((name + (" LoRA" if lora else ""), arch, args.adapt_length, args.adapt_tokens, lora))
    rows = []
    for name, arch, length, tokens, lora in runs:
        for mode in MODES.values():
            per_token = step_flops_per_token(arch, length, mode, args.masked_fraction, lora)
            total = per_token * tokens
            cost = {}
            for gpu in args.gpus:
                for gpus, efficiency in ((1, 1.0), (8, args.efficiency_8)):
                    cost[f"{gpu} x{gpus} hours"] = [
                        wall_hours(total, GPU_PEAK_FLOPS[gpu], mfu, gpus, efficiency) for mfu in args.mfu
                    ]
            rows.append(
                {
                    "run": name,
                    "mode": mode.name,
                    "length": length,
                    "tokens": tokens,
                    "parameters": arch.parameters,
                    "flops_per_token": per_token,
                    "flops_per_token_vs_6N": per_token / (6 * arch.parameters),
                    "total_flops": total,
                    # fp32 weights + gradients + Adam's two moments of what trains (LoRA: the frozen weights
                    # only, 4 bytes each, and the schedulers); activations not included
                    "weights_grads_adam_gib": _state_bytes(arch, mode, lora) / 2**30,
                    **cost,
                }
            )
    return rows


def measure(args: argparse.Namespace) -> dict:
    """tokens/s, counted vs predicted FLOPs, peak memory and achieved MFU of `--sizes` on this CPU (float32)."""
    import torch
    from memory import measure as measure_memory
    from throughput import VOCAB, build, loss_fn, matmul_peak, step_flops_and_activations

    from hf_lomdm.runtime import configure_threads

    threads = configure_threads()
    peak = matmul_peak(torch.device("cpu"))
    x = torch.randint(4, VOCAB, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    rows = []
    for size in args.sizes:
        layers, hidden = CPU_SIZES[size]
        arch = cpu_architecture(layers, hidden, VOCAB)
        for kind in ("mdlm", "lomdm"):
            dims = (hidden, layers, hidden // 32, 3 * hidden)
            model = build(kind, *dims, args.length).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            counted, _ = step_flops_and_activations(model, loss_fn(kind), x, torch.Generator().manual_seed(0))
            times = []
            for round_ in range(args.rounds + 1):  # round 0 warms up
                generator = torch.Generator().manual_seed(round_)
                start = time.perf_counter()
                loss_fn(kind)(model, x, generator).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if round_:
                    times.append(time.perf_counter() - start)
            memory = measure_memory(model, kind, x)
            seconds = statistics.median(times)
            predicted = step_flops_per_token(arch, args.length, MODES[kind]) * x.numel()
            # FlopCounterMode counts no CPU flash attention (`_scaled_dot_product_flash_attention_for_cpu`):
            # the counted FLOPs check the weight matmuls and the head.
            predicted_matmuls = (
                step_flops_per_token(arch, args.length, MODES[kind], attention=False) * x.numel()
            )
            rows.append(
                {
                    "size": size,
                    "mode": kind,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "tokens_per_second": x.numel() / seconds,
                    "seconds_per_step": seconds,
                    "predicted_gflops_per_step": predicted / 1e9,
                    "counted_gflops_per_step": counted / 1e9,
                    "counted_vs_predicted_without_attention": counted / predicted_matmuls,
                    "achieved_mfu": predicted / seconds / peak,
                    "peak_mib": memory["peak_mib"],
                    "activation_mib": memory["activation_mib"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "matmul_peak_gflops": peak / 1e9,
        "batch": args.batch,
        "length": args.length,
        "rows": rows,
    }


def _hours(values: list[float]) -> str:
    def one(hours: float) -> str:
        if hours < 1:
            return f"{60 * hours:.0f} min"
        return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.0f} d"

    low, high = sorted(values)
    return f"{one(low)} – {one(high)}"


def markdown(report: dict) -> str:
    a = report["assumptions"]
    lines = []
    if report.get("measured"):
        m = report["measured"]
        lines += [
            f"Measured on this CPU ({m['threads']} thread(s), float32, batch {m['batch']} x {m['length']}, fp32 "
            f"matmul rate {m['matmul_peak_gflops']:.0f} GFLOP/s):",
            "",
            "| size | mode | params | tokens/s | GFLOP/step predicted | counted / predicted (no attention) | "
            "achieved MFU | "
            "peak MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in m["rows"]:
            lines.append(
                f"| {r['size']} | {r['mode']} | {r['parameters'] / 1e6:.2f}M | {r['tokens_per_second']:.0f} | "
                f"{r['predicted_gflops_per_step']:.2f} | {r['counted_vs_predicted_without_attention']:.3f} | "
                f"{r['achieved_mfu']:.2f} | {r['peak_mib']:.0f} |"
            )
        lines.append("")
    gpus = [key for key in report["projections"][0] if key.endswith(" hours")]
    lines += [
        f"Projected wall time (MFU {a['mfu'][0]:.2f}–{a['mfu'][1]:.2f}; 8 GPUs at {a['efficiency_8']:.2f} of "
        f"linear scaling; masked fraction {a['masked_fraction']}; dense bf16 peaks "
        + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in a["gpu_peak_flops"].items())
        + "):",
        "",
        "| run | mode | N | L | tokens | FLOPs/token (x 6N) | weights+grads+Adam | "
        + " | ".join(gpus)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(gpus),
    ]
    for r in report["projections"]:
        lines.append(
            f"| {r['run']} | {r['mode']} | {r['parameters'] / 1e6:.0f}M | {r['length']} | {r['tokens']:.3g} | "
            f"{r['flops_per_token']:.3g} ({r['flops_per_token_vs_6N']:.2f}) | {r['weights_grads_adam_gib']:.1f} GiB | "
            + " | ".join(_hours(r[g]) for g in gpus)
            + " |"
        )
    lines += ["", f"MFU source: {a['mfu_source']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(CPU_SIZES), choices=list(CPU_SIZES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per size and mode")
    parser.add_argument("--skip-measure", action="store_true", help="projections only")
    parser.add_argument("--gpus", nargs="+", default=list(GPU_PEAK_FLOPS), choices=list(GPU_PEAK_FLOPS))
    parser.add_argument("--mfu", nargs=2, type=float, default=[0.30, 0.45], help="assumed MFU range")
    parser.add_argument("--efficiency-8", type=float, default=0.90, help="8-GPU rate / (8 x one-GPU rate)")
    parser.add_argument("--masked-fraction", type=float, default=0.5, help="share of positions the head sees")
    parser.add_argument("--adapt-tokens", type=float, default=1e9, help="tokens of causal-LM adaptation")
    parser.add_argument("--adapt-length", type=int, default=1024, help="row length of causal-LM adaptation")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    args.adapt_tokens = int(args.adapt_tokens)
    report = {
        "assumptions": {
            "mfu": args.mfu,
            "mfu_source": MFU_SOURCE,
            "efficiency_8": args.efficiency_8,
            "masked_fraction": args.masked_fraction,
            "gpu_peak_flops": {gpu: GPU_PEAK_FLOPS[gpu] for gpu in args.gpus},
            "flops_model": "matmuls and attention; backward = 2x forward (LoRA: 1x); head at masked positions only",
            "state_memory": "16 bytes per trained parameter (fp32 weight, gradient, 2 Adam moments), 4 per frozen "
            "one; activations excluded",
            "architectures": {
                name: asdict(arch)
                for name, arch in {**{k: v[0] for k, v in PAPER_RUNS.items()}, **CAUSAL_LMS}.items()
            },
        },
        "measured": None if args.skip_measure else measure(args),
        "projections": project(args),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    output.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
