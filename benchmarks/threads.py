"""One or two CPU threads, bf16 autocast or float32? Seconds per training step of the main-job model, side by side.

    python benchmarks/threads.py            # ~5 min on a 2-core CPU; prints a table, writes results/threads.json

Times LoMDM training steps (the `shakespeare-char` model: 4 x 128, batch 32 x 128 characters, K = 2) with 1 and
2 PyTorch threads, on the machine as it is ("idle") and with a competing single-threaded matmul process running
("busy": what a shared 2-core box looks like), in interleaved rounds (medians), so machine load that changes over
time hits every setting alike. bf16 autocast is timed too where the CPU has bf16 matrix units
(`hf_lomdm.runtime.has_fast_bf16`), and always for one round to show what it costs where it does not.
`hf_lomdm.runtime.default_num_threads` is chosen from this table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import torch

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.objective import lomdm_loss
from hf_lomdm.runtime import cpu_has_fast_bf16

RESULTS = Path(__file__).parent / "results"


def _busy_loop(stop) -> None:  # a competing job: single-threaded float32 matmuls
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def _step_seconds(model, optimizer, batch, steps: int, bf16: bool) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = lomdm_loss(model, batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setting and round (median)")
    parser.add_argument("--output", default=str(RESULTS / "threads.json"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = LoMDMConfig(
        vocab_size=90,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=384,
        max_position_embeddings=128,
        mask_token_id=0,
        scheduler_intermediate_size=256,
        scheduler_head_size=64,
        schedule="lomdm",
    )
    model = LoMDMForMaskedDiffusion(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(5, 90, (32, 128))
    fast_bf16 = cpu_has_fast_bf16()
    settings = [(threads, load, False) for load in ("idle", "busy") for threads in (1, 2)]
    settings += (
        [(1, "idle", True)]
        if not fast_bf16
        else [(t, load, True) for load in ("idle", "busy") for t in (1, 2)]
    )
    seconds: dict[tuple, list[float]] = {s: [] for s in settings}
    _step_seconds(model, optimizer, batch, 1, False)  # warm-up
    for round_index in range(args.rounds):
        for threads, load, bf16 in settings:
            if bf16 and not fast_bf16 and round_index > 0:
                continue  # 6-8x slower without bf16 units: one round shows it
            torch.set_num_threads(threads)
            stop = mp.Event()
            competitor = mp.Process(target=_busy_loop, args=(stop,)) if load == "busy" else None
            if competitor is not None:
                competitor.start()
                time.sleep(1.0)
            seconds[(threads, load, bf16)].append(_step_seconds(model, optimizer, batch, args.steps, bf16))
            if competitor is not None:
                stop.set()
                competitor.join()
    rows = [
        {
            "threads": t,
            "load": load,
            "precision": "bf16 autocast" if bf16 else "float32",
            "s_per_step": statistics.median(v),
            "rounds": len(v),
        }
        for (t, load, bf16), v in seconds.items()
        if v
    ]
    result = {
        "cpu_count": os.cpu_count(),
        "fast_bf16": fast_bf16,
        "torch": torch.__version__,
        "load_average_at_end": os.getloadavg(),
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print("| threads | machine | precision | s / step (median) |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['threads']} | {row['load']} | {row['precision']} | {row['s_per_step']:.2f} |")
    return result


if __name__ == "__main__":
    main()
