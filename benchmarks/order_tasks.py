"""Does a learned order learn the known best order, and does sampling in it produce more valid rows?

    OMP_NUM_THREADS=1 python benchmarks/order_tasks.py                  # 3 tasks x 4 schedules x 3 seeds, CPU
    python benchmarks/order_tasks.py --tasks max --seeds 0 --steps 60   # a quick look

For each task of `order_zoo.synthetic` (causes must come before effects; every row starts with a `<bos>` anchor
that is never noised) and each schedule (`linear`,
`polynomial`, `per_position`, `lomdm`), a small LoMDM is trained with `LoMDMTrainer` at the package's default
training arguments (fresh rows every step). Per run: the validation NELBO per row (importance-sampled bound), the
exponent contrast (mean e of cause positions minus effect positions; for `lomdm` also the reverse exponents ê on a
fully masked row, which is what the sampler sees first) over training, the cost per step, and the share of valid
rows among `--samples` unconditional samples at L/4 and L/2 steps (binomial s.e.) under each sampler of `ORDERS`:
the schedule-driven `learned` and `random` orders, `learned_ranked` with its most likely order (`ranked`) and with a
uniformly random one at the same per-step quotas (`random_ranked`, `order_temperature=inf`), and `confidence`.
Writes `benchmarks/results/order_tasks.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from order_zoo.synthetic import MASK_ID, TASKS, exponent_contrast, order_task
from order_zoo.training import add_training_flags, training_arguments
from transformers import TrainerCallback, set_seed

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.data import DataCollatorForMaskedDiffusion
from hf_lomdm.evaluation import nelbo_perplexity
from hf_lomdm.runtime import configure_threads
from hf_lomdm.trainer import LoMDMTrainer

RESULTS = Path(__file__).parent / "results"
SCHEDULES = ("linear", "polynomial", "per_position", "lomdm")
# Sampler settings compared (label -> generate kwargs). `learned` / `random` reveal by the schedule (a random
# number of tokens per step); `ranked` / `random_ranked` fill the same fixed per-step quotas, in the learned
# schedule's most likely order (highest ê first) or in a uniformly random one; `confidence` as MaskGIT.
ORDERS = {
    "learned": {"order": "learned"},
    "random": {"order": "random"},
    "ranked": {"order": "learned_ranked"},
    "random_ranked": {"order": "learned_ranked", "order_temperature": math.inf},
    "confidence": {"order": "confidence"},
}


def contrasts(model, task, rows: torch.Tensor) -> dict[str, float]:
    """Exponent contrast of e (clean rows) and of ê on the fully masked canvas after `<bos>`."""
    e, e_hat = task.exponents(model, rows)
    return {
        "forward": exponent_contrast(e, task.cause_mask),
        "reverse_at_start": exponent_contrast(e_hat, task.cause_mask),
    }


class _ContrastLog(TrainerCallback):
    def __init__(self, model, task, rows, every: int):
        self.model, self.task, self.rows, self.every, self.curve = model, task, rows, every, []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.curve.append({"step": state.global_step, **contrasts(self.model, self.task, self.rows)})


def validity(model, task, order: str, steps: int, samples: int, seed: int) -> dict[str, float]:
    rows = task.generate(
        model, samples, generator=torch.Generator().manual_seed(seed), steps=steps, **ORDERS[order]
    )
    p = float(task.is_valid(rows).float().mean())
    return {"valid": p, "se": math.sqrt(max(p * (1 - p), 1e-12) / samples)}


def run(task_name: str, schedule: str, seed: int, args) -> dict:
    task = order_task(task_name, size=args.size, symbols=args.symbols)
    set_seed(seed)
    config = LoMDMConfig(
        vocab_size=task.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        intermediate_size=2 * args.hidden_size,
        max_position_embeddings=task.length + 1,
        mask_token_id=MASK_ID,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        schedule=schedule,
        scheduler_intermediate_size=2 * args.hidden_size,
        scheduler_head_size=args.hidden_size // 2,
    )
    model = LoMDMForMaskedDiffusion(config)
    train_rows = task.training_rows(args.steps * args.batch_size, torch.Generator().manual_seed(1000 + seed))
    val = task.training_rows(args.eval_rows, torch.Generator().manual_seed(99))  # the same for every run
    val_rows = torch.tensor(val["input_ids"])[:, 1:]
    training_args = training_arguments(f"order_tasks/{task_name}-{schedule}", seed, args)
    log = _ContrastLog(model, task, val_rows[:256], every=max(args.steps // 10, 1))
    trainer = LoMDMTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_dict(train_rows),
        data_collator=DataCollatorForMaskedDiffusion(pad_token_id=1),
        callbacks=[log],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    bound = nelbo_perplexity(
        model,
        [{"input_ids": ids, "labels": label} for ids, label in zip(val["input_ids"], val["labels"])],
        time_samples=8,
        generator=torch.Generator().manual_seed(0),
    )
    record = {
        "task": task_name,
        "schedule": schedule,
        "seed": seed,
        "steps": args.steps,
        "s_per_step": seconds / args.steps,
        "nelbo_per_row": bound.nelbo * task.length,
        "nelbo_per_row_se": bound.stderr * task.length,
        "contrast": contrasts(model, task, val_rows[:256]),
        "contrast_curve": log.curve,
        "scheduler_learning_rate": trainer.optimizer.param_groups[-1].get("initial_lr"),
        "samples": args.samples,
        "validity": {},
    }
    for steps in sorted({max(task.length // 4, 1), task.length // 2}):
        for order in ORDERS:
            record["validity"][f"{order}@{steps}"] = validity(model, task, order, steps, args.samples, seed)
    return record


def summarize(records: list[dict]) -> list[dict]:
    """Mean and seed s.d. per (task, schedule)."""
    rows = []
    keys = sorted({(r["task"], r["schedule"]) for r in records}, key=lambda k: (k[0], SCHEDULES.index(k[1])))
    for task, schedule in keys:
        runs = [r for r in records if r["task"] == task and r["schedule"] == schedule]

        def stat(values):
            values = list(values)
            return {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            }

        row = {
            "task": task,
            "schedule": schedule,
            "seeds": len(runs),
            "nelbo_per_row": stat(r["nelbo_per_row"] for r in runs),
            "contrast": stat(r["contrast"]["forward"] for r in runs),
            "contrast_reverse": stat(r["contrast"]["reverse_at_start"] for r in runs),
            "contrast_right_sign_all_seeds": all(r["contrast"]["forward"] > 0 for r in runs),
            "s_per_step": stat(r["s_per_step"] for r in runs),
            "validity": {},
        }
        for key in runs[0]["validity"]:
            valid = [r["validity"][key]["valid"] for r in runs]
            n = len(runs) * runs[0]["samples"]
            p = statistics.fmean(valid)
            row["validity"][key] = {"valid": p, "se": math.sqrt(max(p * (1 - p), 1e-12) / n)}
        rows.append(row)
    return rows


def _validity_cell(row: dict, steps: int) -> str:
    return " / ".join(
        f"{row['validity'][f'{o}@{steps}']['valid']:.3f} ± {row['validity'][f'{o}@{steps}']['se']:.3f}"
        for o in ORDERS
    )


def _ranked_gain(row: dict, steps: int) -> str:
    """`ranked` minus `random_ranked` validity, and that difference in standard errors (independent samples)."""
    a, b = row["validity"][f"ranked@{steps}"], row["validity"][f"random_ranked@{steps}"]
    diff = a["valid"] - b["valid"]
    return f"{diff:+.3f} ({diff / math.hypot(a['se'], b['se']):+.1f} s.e.)"


def markdown(summary: list[dict]) -> str:
    orders = " / ".join(ORDERS)
    lines = [
        (
            "| task | schedule | NELBO / row (mean ± seed sd) | e contrast (causes − effects) | right sign, all seeds "
            f"| valid: {orders} @ L/4 | @ L/2 | ranked − random_ranked @ L/4 | @ L/2 | s / step |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        steps = sorted({int(k.split("@")[1]) for k in row["validity"]})
        lines.append(
            f"| {row['task']} | {row['schedule']} | "
            f"{row['nelbo_per_row']['mean']:.3f} ± {row['nelbo_per_row']['sd']:.3f} "
            f"| {row['contrast']['mean']:+.3f} ± {row['contrast']['sd']:.3f} | "
            f"{'yes' if row['contrast_right_sign_all_seeds'] else 'no'} | {_validity_cell(row, steps[0])} "
            f"| {_validity_cell(row, steps[-1])} | {_ranked_gain(row, steps[0])} | {_ranked_gain(row, steps[-1])} "
            f"| {row['s_per_step']['mean']:.3f} |"
        )
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in records}, key=TASKS.index)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    colours = {"per_position": "tab:blue", "lomdm": "tab:red"}
    for ax, task in zip(axes[0], tasks):
        for r in records:
            if r["task"] == task and r["schedule"] in colours:
                curve = r["contrast_curve"]
                ax.plot(
                    [c["step"] for c in curve],
                    [c["forward"] for c in curve],
                    color=colours[r["schedule"]],
                    alpha=0.7,
                    label=f"{r['schedule']} (seed {r['seed']})",
                )
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=f"{task}: e(causes) − e(effects)", xlabel="training step", ylabel="exponent contrast")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--symbols", type=int, default=8)
    add_training_flags(parser, steps=400)
    parser.add_argument("--eval_rows", type=int, default=512)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--output", default=str(RESULTS / "order_tasks"))
    args = parser.parse_args(argv)
    threads = configure_threads()
    records = []
    for task in args.tasks.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for schedule in args.schedules.split(","):
                record = run(task, schedule, seed, args)
                records.append(record)
                print(
                    json.dumps(
                        {k: record[k] for k in ("task", "schedule", "seed", "nelbo_per_row", "contrast")}
                    ),
                    {k: round(v["valid"], 3) for k, v in record["validity"].items()},
                    flush=True,
                )
                result = {
                    "command": "python benchmarks/order_tasks.py "
                    + " ".join(sys.argv[1:] if argv is None else argv),
                    "threads": threads,
                    "args": vars(args),
                    "summary": summarize(records),
                    "runs": records,
                }
                Path(args.output).parent.mkdir(parents=True, exist_ok=True)
                Path(args.output + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.output + ".md").write_text(markdown(result["summary"]) + "\n")
    plot(records, Path(args.output + ".png"))
    print(markdown(result["summary"]))
    return result


if __name__ == "__main__":
    main()
