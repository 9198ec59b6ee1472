"""Activation memory of a training step with and without gradient checkpointing, measured by the allocator.

    python benchmarks/memory.py                  # main-job size and 4x, MDLM and LoMDM mode, ~1 min on one core
    python benchmarks/memory.py --length 512     # longer rows: activations grow with L, parameters do not

How it measures. One forward + backward of the loss (`lomdm_loss`, as `LoMDMTrainer` runs it) under
`torch.profiler.profile(profile_memory=True)`: the profiler records every allocation and free of PyTorch's CPU
allocator with its size and time. Their running sum is the number of bytes of tensors alive at each moment; the
script reports, relative to the level when the step starts (weights allocated, gradients `None`):

- `activations`: bytes alive when the backward pass starts, i.e. what the forward pass keeps for backward
  (everything else it allocated has been freed by then);
- `peak`: the most bytes alive at any moment of the step (activations + gradients + the largest temporaries;
  with checkpointing, also one recomputed layer at a time).

These are tensor bytes, not the process's resident memory (no allocator caching or fragmentation on the CPU, so
on a GPU `torch.cuda.max_memory_allocated` reads the same quantity). Checkpointing is
`model.gradient_checkpointing_enable()` (non-reentrant, transformers' default), as `--gradient_checkpointing`
turns on through the Trainer. Seconds per step (medians of interleaved rounds, not profiled) show what the
recomputation costs. Writes `benchmarks/results/memory.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from throughput import SIZES, VOCAB, build, loss_fn
from torch.profiler import ProfilerActivity, profile, record_function

from hf_lomdm.runtime import configure_threads

RESULTS = Path(__file__).parent / "results" / "memory.json"
BACKWARD = "memory.py::backward"


def step(model, kind: str, x: torch.Tensor, seed: int) -> None:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(kind)(model, x, torch.Generator().manual_seed(seed))
    with record_function(BACKWARD):
        loss.backward()


def measure(model, kind: str, x: torch.Tensor) -> dict[str, float]:
    """Bytes alive at the start of backward and at the peak of one step, above the level at its start."""
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, kind, x, seed=0)
    events = prof.profiler.kineto_results.events()
    backward_start = min(e.start_ns() for e in events if e.name() == BACKWARD)
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = list(itertools.accumulate(nbytes for _, nbytes in allocations))
    at_backward = next(
        (level for (t, _), level in zip(reversed(allocations), reversed(live)) if t < backward_start), 0
    )
    return {"activation_mib": at_backward / 2**20, "peak_mib": max(live, default=0) / 2**20}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--kinds", nargs="+", default=["mdlm", "lomdm"], choices=["mdlm", "lomdm"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (one step per setting each)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    threads = configure_threads()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*", category=FutureWarning)
    x = torch.randint(4, VOCAB, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    rows = []
    for size, kind in itertools.product(args.sizes, args.kinds):
        models = {}
        for checkpointing in (False, True):
            model = build(kind, *SIZES[size], args.length).train()
            if checkpointing:
                model.gradient_checkpointing_enable()
            step(model, kind, x, seed=0)  # warm-up: lazily allocated buffers are not activations
            models[checkpointing] = model
        times = {checkpointing: [] for checkpointing in models}
        for round_ in range(args.rounds):
            for checkpointing, model in models.items():
                start = time.perf_counter()
                step(model, kind, x, seed=round_ + 1)
                times[checkpointing].append(time.perf_counter() - start)
        measured = {checkpointing: measure(model, kind, x) for checkpointing, model in models.items()}
        for checkpointing, model in models.items():
            rows.append(
                {
                    "size": size,
                    "dims": dict(zip(("hidden", "layers", "heads", "ffn"), SIZES[size])),
                    "kind": kind,
                    "gradient_checkpointing": checkpointing,
                    "parameters_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
                    **measured[checkpointing],
                    "seconds_per_step": statistics.median(times[checkpointing]),
                    "time_vs_off": statistics.median(
                        t / o for t, o in zip(times[checkpointing], times[False])
                    ),
                    "activations_vs_off": measured[checkpointing]["activation_mib"]
                    / measured[False]["activation_mib"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "settings": vars(args),
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nbatch {args.batch} x {args.length} tokens, float32, {threads} thread(s); MiB of tensors alive "
        "(torch.profiler allocator events)\n"
    )
    print(
        "| size | model | checkpointing | activations (MiB) | peak (MiB) | activations vs off | time vs off |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['kind']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            f"{r['activation_mib']:.1f} | {r['peak_mib']:.1f} | {r['activations_vs_off']:.2f} | "
            f"{r['time_vs_off']:.2f} |"
        )


if __name__ == "__main__":
    main()
