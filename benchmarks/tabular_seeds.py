"""Aggregate `examples/tabular.py` runs over seeds: NELBO per row, Shape, Trend (mean ± seed sd) and the learned
column order with its seed-to-seed agreement (Spearman's rank correlation between seeds).

    for seed in 0 1 2; do python examples/tabular.py --csv adult.data --schedules linear,per_position,lomdm \
        --steps 1200 --eval-steps 300 --seed $seed --output-dir /tmp/adult/seed$seed; done
    python benchmarks/tabular_seeds.py /tmp/adult/seed*/results.json \
        --output benchmarks/results/tabular_adult_restricted

Writes OUTPUT.json (the per-seed numbers) and OUTPUT.md (the tables). Each seed's steps read "best / stop"
(the evaluation kept / the last training step, * when `--patience` ended the run); the paired difference to
`linear` is the mean ± standard error over seeds of (schedule − linear), seed by seed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path


def ranks(values: dict[str, float]) -> dict[str, int]:
    order = sorted(values, key=lambda name: -values[name])
    return {name: rank for rank, name in enumerate(order, 1)}


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    ra, rb = ranks(a), ranks(b)
    n = len(ra)
    return 1 - 6 * sum((ra[k] - rb[k]) ** 2 for k in ra) / (n * (n * n - 1))


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def steps(result: dict) -> str:
    if "stopped_step" not in result:  # runs from before early stopping was recorded
        return str(result["best_step"])
    return f"{result['best_step']} / {result['stopped_step']}{'*' if result['stopped_early'] else ''}"


def paired_difference(rows: list[dict], baseline: list[dict]) -> str:
    differences = [r["val_nelbo_per_row"] - b["val_nelbo_per_row"] for r, b in zip(rows, baseline)]
    if len(differences) < 2:
        return f"{differences[0]:+.3f}"
    stderr = statistics.stdev(differences) / len(differences) ** 0.5
    return f"{statistics.mean(differences):+.3f} ± {stderr:.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="results.json of each seed")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    runs = [json.loads(Path(path).read_text()) for path in args.results]
    schedules = list(runs[0]["results"])
    lines = [
        f"{len(runs)} seeds; NELBO per row = importance-sampled bound on the validation rows (mean ± seed sd)",
        "",
        "| schedule | NELBO per row | − linear (paired) | Shape | Trend | best / stop step (per seed) | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for schedule in schedules:
        rows = [run["results"][schedule] for run in runs]
        baseline = [run["results"].get("linear") for run in runs]
        difference = paired_difference(rows, baseline) if schedule != "linear" and all(baseline) else ""
        parameters = ", ".join(sorted({f"{r['parameters']:,}" for r in rows if "parameters" in r}))
        lines.append(
            f"| {schedule} | {mean_sd([r['val_nelbo_per_row'] for r in rows])} | {difference} | "
            f"{mean_sd([r['shape'] for r in rows])} | {mean_sd([r['trend'] for r in rows])} | "
            f"{', '.join(steps(r) for r in rows)} | {parameters or '?'} |"
        )
    for schedule in schedules:
        exponents = [run["results"][schedule].get("exponents") for run in runs]
        if not exponents[0] or schedule == "linear":
            continue
        agreement = [spearman(a, b) for a, b in itertools.combinations(exponents, 2)]
        mean_e = {c: statistics.mean(e[c] for e in exponents) for c in exponents[0]}
        order = sorted(mean_e, key=lambda c: -mean_e[c])
        lines += [
            "",
            f"`{schedule}` column order (mean exponent over seeds, earliest first); seed-to-seed Spearman "
            f"{', '.join(f'{a:+.2f}' for a in agreement)}:",
            "",
            ", ".join(f"{c} {mean_e[c]:.2f}" for c in order),
        ]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=2))
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
