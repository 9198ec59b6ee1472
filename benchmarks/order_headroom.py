"""How much the bound of a trained text model could gain from any generation order: hand-designed exponents.

For a fixed denoiser, the NELBO's L_main is an expectation over reveal orders of -log Π p_θ(x_i | what was
revealed before i); with an exact denoiser every order gives -log p(x) (the chain rule), so a schedule can only
gain from the denoiser's order-dependent error. This script measures that headroom on a trained main-job
checkpoint: it replaces the forward exponents by hand-designed patterns e = c1 + c2 NormSig(k s(x)) (the
schedule module's own formula) and reports the held-out NELBO against the constant exponent c1 (the `polynomial`
twin of the same denoiser), under the same random numbers for every pattern:

- `whitespace`: s = 1 on spaces and newlines (k > 0 reveals them first);
- `confidence`: s = log p_θ(x_i | a half-masked row), averaged over two masks (k > 0: easy tokens first, the
  curriculum LoMDM reports);
- `left_to_right`: s = -i / L (k > 0: reading order, AR-like);
- `trained`: the checkpoint's own forward scheduler (k scales its scores).

L_main is what a reverse scheduler that predicts e exactly would pay; `total` adds L_velocity with the
checkpoint's own reverse scheduler (which never saw these patterns), an upper bound on the velocity cost.

    python benchmarks/order_headroom.py runs/shakespeare-char            # ~2 min on one busy core (64 rows x 8)
    python benchmarks/order_headroom.py RUN --rows 32 --time-samples 4    # smoke run
    python benchmarks/order_headroom.py --train 0,6,-6 --rows 128 --seed 0   # ~5 min per contrast on one busy core

`--train` answers the question the fixed-denoiser numbers leave open (a denoiser trained under one order is
evaluated off its training distribution under another): it trains the main-job model from scratch under the
fixed `whitespace` pattern (the reverse scheduler learns ê beside the denoiser) and under the constant exponent,
same seed and data order, and compares their held-out bounds.

Prints a Markdown table and writes JSON (`benchmarks/results/order_headroom.json`; with `--train`,
`order_headroom_train.json`, one entry per seed: a run adds or replaces its own seed's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from hf_lomdm import LoMDMForMaskedDiffusion
from hf_lomdm.objective import stratified_nelbo

RESULTS = Path(__file__).parent / "results" / "order_headroom.json"
TRAIN_RESULTS = RESULTS.with_name("order_headroom_train.json")
PATTERNS = {
    "whitespace": (2.0, 6.0, -6.0),
    "confidence": (1.0, 3.0, -3.0),
    "left_to_right": (3.0, -3.0),
    "trained": (1.0, 16.0),
}


@torch.no_grad()
def pattern_scores(model, tokenizer, rows: torch.Tensor, name: str) -> torch.Tensor:
    """s(x) `(B, L)` of one named pattern (see the module docstring)."""
    if name == "whitespace":
        ids = [tokenizer.convert_tokens_to_ids(c) for c in (" ", "\n")]
        return torch.isin(rows, torch.tensor(ids)).float()
    if name == "left_to_right":
        return -torch.arange(rows.shape[1], dtype=torch.float32).expand(rows.shape) / rows.shape[1]
    if name == "confidence":
        total = torch.zeros(rows.shape)
        for seed in (0, 1):
            half = torch.rand(rows.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
            log_p = model(rows.masked_fill(half, model.config.mask_token_id)).logits
            total += log_p.gather(-1, rows[..., None]).squeeze(-1).clamp(min=-30.0)
        return total / 2
    if name == "trained":
        return model.forward_exponents(rows, return_scores=True)[1]
    raise ValueError(f"unknown pattern {name!r}")


@contextlib.contextmanager
def designed_exponents(model, score_fn):
    """Within the block, the model's forward exponents are e = c1 + c2 NormSig(score_fn(x)) (`score_fn`: ids
    `(B, L)` -> scores `(B, L)`; None: the constant c1), fixed (no gradient); ê, the denoiser and training are the
    model's own. Noise masks are all positions, as for the packed main-job rows."""
    original = model.forward_exponents

    def designed(input_ids, attention_mask=None, noise_mask=None, position_ids=None, return_scores=False):
        scores = None if score_fn is None else score_fn(input_ids).float()
        e = (
            torch.full(input_ids.shape, model.c1)
            if scores is None
            else model._exponents(scores, torch.ones_like(input_ids, dtype=torch.bool))
        )
        return (e, scores) if return_scores else e

    model.forward_exponents = designed
    try:
        yield designed
    finally:
        model.forward_exponents = original


def tiled(scores: torch.Tensor | None):
    """A score function that returns precomputed per-row `scores`, tiled to the batch (stratified_nelbo's rows)."""
    if scores is None:
        return None
    return lambda ids: scores.repeat(ids.shape[0] // scores.shape[0], 1)


@torch.no_grad()
def nelbo_with_scores(model, rows, score_fn, time_samples: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-row per-token NELBO parts when the forward exponents come from `score_fn` (None: the constant c1)."""
    with designed_exponents(model, score_fn) as designed:
        res = stratified_nelbo(
            model, rows, time_samples=time_samples, generator=torch.Generator().manual_seed(seed)
        )
        e = designed(rows)
    tokens = res.num_tokens.double()
    return {
        "total": res.nelbo.double().mean(0) / tokens,
        "main": res.loss_main.double().mean(0) / tokens,
        "e_sd": e.std(-1).mean(),
    }


def minus_constant(res: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, float]:
    """L_main and the total NELBO of `res` minus those of the constant exponent, mean ± s.e. over the rows."""
    out = {}
    for part in ("main", "total"):
        diff = res[part] - base[part]
        out[f"{part}_minus_constant"] = float(diff.mean())
        out[f"{part}_minus_constant_se"] = float(diff.std() / math.sqrt(len(diff)))
    return out


def train_with_designed_order(tokenizer, train_rows, val_rows, k: float, args) -> dict[str, torch.Tensor]:
    """Train the main-job model from scratch with the `whitespace` forward pattern at contrast k (0: the constant
    c1, i.e. `polynomial` with a reverse scheduler that learns ê = c1), then its held-out NELBO."""
    from scheduler_gradients import ARCH, main_job_trainer

    from hf_lomdm import LoMDMConfig
    from hf_lomdm.data import tokenizer_config_kwargs

    ids = torch.tensor([tokenizer.convert_tokens_to_ids(c) for c in (" ", "\n")])
    score_fn = None if k == 0 else (lambda x: k * torch.isin(x, ids).float())
    torch.manual_seed(args.seed)
    model = LoMDMForMaskedDiffusion(
        LoMDMConfig(**tokenizer_config_kwargs(tokenizer), schedule="lomdm", **ARCH)
    )
    trainer = main_job_trainer(model, train_rows, f"/tmp/order_headroom_k{k:g}", args.train_steps, args.seed)
    with designed_exponents(model, score_fn):
        trainer.train()
    model.eval()
    return nelbo_with_scores(model, val_rows, score_fn, args.time_samples, args.seed)


def train_main(args, char_rows, start: float) -> None:
    """`--train`: jointly trained designed orders against the constant exponent, same seed and data order."""
    contrasts = [float(k) for k in args.train.split(",")]
    tokenizer, train_rows, val_rows = char_rows(0)
    rows = val_rows[: args.rows]
    results = {k: train_with_designed_order(tokenizer, train_rows, rows, k, args) for k in contrasts}
    base = results.get(0.0)
    table = []
    for k, res in results.items():
        row = {
            "pattern": "whitespace",
            "k": k,
            "e_sd": float(res["e_sd"]),
            "nelbo": float(res["total"].mean()),
            "velocity": float((res["total"] - res["main"]).mean()),
        }
        if base is not None:
            row |= minus_constant(res, base)
        table.append(row)
        print(
            f"trained with whitespace k {k:+g}: "
            + ", ".join(f"{n} {v:+.4f}" for n, v in row.items() if n not in ("k", "pattern"))
        )
    record = {"args": vars(args), "trained": table, "seconds": time.perf_counter() - start}
    # One file for every seed: this seed's record replaces its entry, the other seeds' stay.
    path = Path(args.output)
    merged = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    merged.setdefault("seeds", {})[str(args.seed)] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    print(f"wrote seed {args.seed} to {path} ({record['seconds']:.0f} s)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "checkpoint", nargs="?", help="a trained main-job folder (training/configs/shakespeare-char.yaml)"
    )
    parser.add_argument(
        "--train",
        default=None,
        help="instead: train the main-job model from scratch with the whitespace pattern at these comma-separated "
        "contrasts (0 = the constant c1) and compare their held-out bounds",
    )
    parser.add_argument("--train-steps", "--train_steps", type=int, default=400)
    parser.add_argument("--rows", type=int, default=64, help="held-out rows")
    parser.add_argument(
        "--time-samples", "--time_samples", type=int, default=8, help="stratified times per row"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", default=None, help=f"default {RESULTS} ({TRAIN_RESULTS.name} with --train)"
    )
    args = parser.parse_args(argv)
    from scheduler_gradients import char_rows  # the main job's rows (run as a script from benchmarks/)

    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.output is None:
        args.output = str(TRAIN_RESULTS if args.train is not None else RESULTS)
    if args.train is not None:
        return train_main(args, char_rows, start)
    if args.checkpoint is None:
        parser.error("give a checkpoint, or --train")
    model = LoMDMForMaskedDiffusion.from_pretrained(args.checkpoint).eval()
    tokenizer, _, val_rows = char_rows(0)
    if AutoTokenizer.from_pretrained(args.checkpoint).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"{args.checkpoint} was not trained with the main job's character tokenizer")
    rows = val_rows[: args.rows]
    base = nelbo_with_scores(model, rows, None, args.time_samples, args.seed)
    table = []
    for name, contrasts in PATTERNS.items():
        s = pattern_scores(model, tokenizer, rows, name)
        for k in contrasts:
            res = nelbo_with_scores(model, rows, tiled(k * s), args.time_samples, args.seed)
            row = {"pattern": name, "k": k, "e_sd": float(res["e_sd"]), **minus_constant(res, base)}
            table.append(row)
            print(
                f"{name:14s} k {k:+5.1f}: e sd {row['e_sd']:.3f}, L_main − constant "
                f"{row['main_minus_constant']:+.4f} ± {row['main_minus_constant_se']:.4f}, total − constant "
                f"{row['total_minus_constant']:+.4f} ± {row['total_minus_constant_se']:.4f} nats/char",
                flush=True,
            )
    record = {
        "checkpoint": args.checkpoint,
        "args": vars(args),
        "constant_nelbo": float(base["total"].mean()),
        "patterns": table,
        "seconds": time.perf_counter() - start,
    }
    print(f"\nconstant exponent c1: NELBO {record['constant_nelbo']:.4f} nats/char ({args.rows} rows)")
    print("| pattern | k | e sd | L_main − constant | total − constant |  (nats/char, ± s.e. over rows)")
    print("|---|---|---|---|---|")
    for row in table:
        print(
            f"| {row['pattern']} | {row['k']:+g} | {row['e_sd']:.3f} | "
            f"{row['main_minus_constant']:+.4f} ± {row['main_minus_constant_se']:.4f} | "
            f"{row['total_minus_constant']:+.4f} ± {row['total_minus_constant_se']:.4f} |"
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
