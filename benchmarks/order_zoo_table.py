"""The order zoo: solved rate of every sampler on puzzles where the right order is known to matter.

    OMP_NUM_THREADS=1 python benchmarks/order_zoo_table.py --tasks sudoku4,add4 --seeds 0
    python benchmarks/order_zoo_table.py --tasks sudoku4 --seeds 0,1,2 --steps 1500 --ar

For each task of `order_zoo` (the givens are the canvas, the blanks are infilled by `model.generate`) and each
schedule (`linear`, `per_position`, `lomdm`), a model of the same backbone is trained with `LoMDMTrainer` on
fresh training puzzles (labels -100 on the givens: p(blanks | givens)), then solves `--samples` held-out puzzles
with every sampler of `SAMPLERS` at steps = L/4, L/2 and L (L = blanks per puzzle). With `--ar`, a same-size
`LlamaForCausalLM` is trained on the same rows and fills the blanks in reading order (givens forced).

Per run: solved rate ± binomial s.e., training and sampling cost per step, context use (loss of a blank with
only it masked over loss with every blank masked: ≈ 1 means the denoiser ignores the other blanks, and then no
order can help), and for the reverse exponents ê on the puzzle's canvas: their Spearman correlation with the
task's known order (`known_order`, over the blanks of each puzzle) and their spread across puzzles at one cell
(a state-dependent schedule adapts to the givens only if that spread is not 0). Writes
`benchmarks/results/order_zoo.{json,md}`; `--combine a.json,b.json` tables the runs of earlier files together.

The samplers `confidence_e{λ}` / `margin_e{λ}` are the package's `confidence_learned` / `margin_learned` rules
(score + λ · standardised log ê); `confidence_noise{λ}` is their control, the same rule with ê replaced by
uniform noise (a perturbation of the confidence order with no learned order in it). With `--order_nll`, each
diffusion model also gets the teacher-forced NLL of the held-out solutions under the orders of
`order_zoo.order_likelihood` and its NELBO per puzzle: how much the likelihood, hence the scheduler's training
signal, depends on the order. `--forward_reads_givens` trains `GivensForwardLoMDM` (a research variant).
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
from order_zoo import ZOO, zoo_task
from order_zoo.order_likelihood import ORDERS, order_likelihoods
from order_zoo.synthetic import BOS_ID, EOS_ID, FIRST_ID, MASK_ID, PAD_ID
from order_zoo.training import add_training_flags, training_arguments
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, set_seed

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.data import DataCollatorForMaskedDiffusion
from hf_lomdm.evaluation import context_use, nelbo_perplexity
from hf_lomdm.runtime import configure_threads
from hf_lomdm.trainer import LoMDMTrainer

RESULTS = Path(__file__).parent / "results"
SCHEDULES = ("linear", "per_position", "lomdm")
MIXED_WEIGHTS = (0.1, 0.3, 1.0)  # λ of the rules that rank by the denoiser's score + λ · standardised log ê
SAMPLERS = {
    "random": {"order": "random"},  # schedule-driven with ê ≡ 1 (MDLM): a random number of reveals per step
    "random_ranked": {"order": "learned_ranked", "order_temperature": math.inf},  # fixed quotas, random order
    "confidence": {"order": "confidence"},
    "margin": {"order": "margin"},
    "entropy": {"order": "entropy"},
    "learned": {"order": "learned"},  # schedule-driven with ê
    "ranked_t0": {"order": "learned_ranked", "order_temperature": 0.0},  # highest ê first
    "ranked_t1": {"order": "learned_ranked", "order_temperature": 1.0},  # Plackett-Luce draw with weights ê
    **{f"confidence_e{w}": {"order": "confidence_learned", "order_weight": w} for w in MIXED_WEIGHTS},
    **{f"margin_e{w}": {"order": "margin_learned", "order_weight": w} for w in MIXED_WEIGHTS},
}
LEARNED = ("learned", "ranked_t0", "ranked_t1")
HEURISTICS = ("confidence", "margin", "entropy")
MIXED = tuple(f"{score}_e{w}" for score in ("confidence", "margin") for w in MIXED_WEIGHTS)


def binomial(solved: torch.Tensor) -> dict[str, float]:
    p, n = float(solved.double().mean()), solved.numel()
    return {"solved": p, "se": math.sqrt(p * (1 - p) / n), "n": n}


def step_counts(task) -> list[int]:
    length = task.num_blanks
    return sorted({max(length // 4, 1), max(length // 2, 1), length})


def _training_data(task, args, seed: int) -> tuple[Dataset, DataCollatorForMaskedDiffusion]:
    puzzles = task.train_puzzles(args.steps * args.batch_size, torch.Generator().manual_seed(1000 + seed))
    return Dataset.from_dict(task.training_rows(*puzzles)), DataCollatorForMaskedDiffusion(
        pad_token_id=PAD_ID
    )


def backbone_sizes(task, args) -> dict:
    return {
        "vocab_size": task.vocab_size,
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.layers,
        "num_attention_heads": 4,
        "intermediate_size": 2 * args.hidden_size,
        "max_position_embeddings": task.length + 1,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks of `values` `(n,)` with ties sharing their mean rank (so a constant ê has no order)."""
    below = (values[None, :] < values[:, None]).sum(-1).double()
    ties = (values[None, :] == values[:, None]).sum(-1).double()
    return below + (ties - 1) / 2


def exponent_diagnostics(model, task, solutions, givens) -> dict[str, float]:
    """Spearman correlation of ê (on the canvas, at the blanks) with the known order, and ê's spread at a cell."""
    canvas = task.canvas(solutions, givens)
    noise_mask = torch.cat([torch.zeros(len(canvas), 1, dtype=torch.bool), ~givens], -1)
    with torch.no_grad():
        e_hat = model(canvas, noise_mask=noise_mask).reverse_exponents[:, 1:].double()  # (N, length)
    known = task.known_order(solutions, givens).double()
    correlations = []
    for row_e, row_known, blank in zip(e_hat, known, ~givens):
        a, b = _ranks(row_e[blank]), _ranks(row_known[blank])
        if b.std() > 0:  # a constant ê correlates 0 with any order
            correlations.append(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.std() > 0 else 0.0)
    blank = (~givens).double()

    def masked_sd(dim: int) -> torch.Tensor:  # sd of ê over the blanks along `dim`
        count = blank.sum(dim, keepdim=True).clamp(min=1)
        mean = (e_hat * blank).sum(dim, keepdim=True) / count
        return (((e_hat - mean) ** 2 * blank).sum(dim, keepdim=True) / count).sqrt()

    return {
        "spearman_with_known_order": statistics.fmean(correlations) if correlations else 0.0,
        "sd_across_puzzles_at_a_cell": float(masked_sd(0).mean()),
        "sd_within_puzzle": float(masked_sd(1).mean()),
    }


def _random_exponents(generator: torch.Generator):
    """A forward hook that replaces the model's ê by uniform draws in [0.5, 1.5): the control of the mixed rules
    (same perturbation of the score, no learned order in it)."""

    def hook(module, inputs, output):
        if output.reverse_exponents is not None:
            shape = output.reverse_exponents.shape
            output.reverse_exponents = 0.5 + torch.rand(shape, generator=generator).to(
                output.reverse_exponents
            )
        return output

    return hook


def solve_rates(model, task, solutions, givens, args, seed: int) -> dict:
    rates = {}
    controls = {f"confidence_noise{w}": SAMPLERS[f"confidence_e{w}"] for w in MIXED_WEIGHTS[:2]}
    for steps in step_counts(task):
        for label, settings in {**SAMPLERS, **controls}.items():
            hook = None
            if label in controls:
                hook = model.register_forward_hook(_random_exponents(torch.Generator().manual_seed(seed + 7)))
            start = time.perf_counter()
            out = model.generate(
                task.canvas(solutions, givens),
                max_new_tokens=0,
                steps=steps,
                temperature=args.temperature,
                generator=torch.Generator().manual_seed(seed),
                return_dict_in_generate=True,
                **settings,
            )
            seconds = time.perf_counter() - start
            if hook is not None:
                hook.remove()
            rows = out.sequences[:, 1:]
            rates[f"{label}@{steps}"] = {
                **binomial(task.is_solved(rows, solutions, givens)),
                "s_per_pass": seconds / max(int(out.nfe.max()), 1),
            }
    return rates


class GivensForwardLoMDM(LoMDMForMaskedDiffusion):
    """A research variant (`--forward_reads_givens`), not in the package: the forward scheduler reads the features
    of the puzzle (x with its blanks masked) instead of those of the clean row x. In the package g_φ reads f(x),
    and a clean row shows no givens, so e(x) can depend on which cells are given only through NormSig's centring
    over M; ê, trained to match e, then has no reason to follow the givens either. Here e is still a function of
    x (the NELBO stays a bound), but one that sees the givens, as ê does."""

    def forward_exponents(self, input_ids, attention_mask=None, noise_mask=None, position_ids=None, **kwargs):
        if noise_mask is not None:
            input_ids = input_ids.masked_fill(noise_mask.bool(), self.config.mask_token_id)
        return super().forward_exponents(input_ids, attention_mask, noise_mask, position_ids, **kwargs)


def run_diffusion(task, schedule: str, seed: int, args, test) -> dict:
    set_seed(seed)
    config = LoMDMConfig(
        **backbone_sizes(task, args),
        mask_token_id=MASK_ID,
        schedule=schedule,
        scheduler_intermediate_size=2 * args.hidden_size,
        scheduler_head_size=args.hidden_size // 2,
    )
    model = (GivensForwardLoMDM if args.forward_reads_givens else LoMDMForMaskedDiffusion)(config)
    data, collator = _training_data(task, args, seed)
    trainer = LoMDMTrainer(
        model=model,
        args=training_arguments(f"order_zoo/{task.name}-{schedule}", seed, args),
        train_dataset=data,
        data_collator=collator,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    solutions, givens = test
    rows = task.training_rows(solutions, givens)
    use = context_use(
        model,
        [{"input_ids": i, "labels": label} for i, label in zip(rows["input_ids"], rows["labels"])],
        fractions=("one", "all"),
        max_sequences=128,
        generator=torch.Generator().manual_seed(0),
    )
    record = {
        "task": task.name,
        "model": schedule + ("+givens" if args.forward_reads_givens else ""),
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_s_per_step": seconds / args.steps,
        "final_loss": trainer.state.log_history[-2].get("loss"),
        "context_use_ratio": use.ratio,
        "context_use_ratio_se": use.ratio_stderr,
        "exponents": exponent_diagnostics(model, task, solutions, givens),
        "solved": solve_rates(model, task, solutions, givens, args, seed),
    }
    if args.order_nll:
        record["order_nll"] = order_likelihoods(model, task, solutions, givens, seed)
        bound = nelbo_perplexity(  # an expectation over reveal orders: `random`'s NLL for `linear`
            model,
            [{"input_ids": i, "labels": label} for i, label in zip(rows["input_ids"], rows["labels"])],
            time_samples=16,
            generator=torch.Generator().manual_seed(0),
        )
        record["nelbo_per_puzzle"] = {
            "nelbo": bound.nelbo * task.num_blanks,
            "se": bound.stderr * task.num_blanks,
        }
    return record


def ar_fill(model, task, solutions, givens, temperature: float, generator) -> torch.Tensor:
    """Fill the blanks left to right: one pass per position, givens forced, blanks sampled."""
    canvas = task.canvas(solutions, givens)
    with torch.no_grad():
        for position in range(1, canvas.shape[1]):
            blank = canvas[:, position] == MASK_ID
            if not blank.any():
                continue
            logits = model(canvas[:, :position]).logits[:, -1, : task.vocab_size].double()
            logits[:, :FIRST_ID] = -math.inf  # never a special token
            if temperature == 0:
                tokens = logits.argmax(-1)
            else:
                tokens = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
            canvas[:, position] = torch.where(blank, tokens, canvas[:, position])
    return canvas[:, 1:]


def run_ar(task, seed: int, args, test) -> dict:
    set_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**backbone_sizes(task, args), tie_word_embeddings=False))
    data, collator = _training_data(task, args, seed)
    trainer = Trainer(
        model=model,
        args=training_arguments(f"order_zoo/{task.name}-ar", seed, args, cls=TrainingArguments),
        train_dataset=data,
        data_collator=collator,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    solutions, givens = test
    start = time.perf_counter()
    rows = ar_fill(model, task, solutions, givens, args.temperature, torch.Generator().manual_seed(seed))
    passes = int((~givens).any(0).sum())
    return {
        "task": task.name,
        "model": "ar",
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_s_per_step": seconds / args.steps,
        "final_loss": trainer.state.log_history[-2].get("loss"),
        "solved": {
            f"left_to_right@{task.num_blanks}": {
                **binomial(task.is_solved(rows, solutions, givens)),
                "s_per_pass": (time.perf_counter() - start) / passes,
            }
        },
    }


def summarize(records: list[dict]) -> list[dict]:
    """Per (task, model, sampler@steps): per-seed rates and the seed-level mean ± s.e."""
    rows = []
    for task, model in dict.fromkeys((r["task"], r["model"]) for r in records):
        runs = [r for r in records if r["task"] == task and r["model"] == model]
        for key in runs[0]["solved"]:
            rates = [r["solved"][key]["solved"] for r in runs]
            rows.append(
                {
                    "task": task,
                    "model": model,
                    "sampler": key,
                    "per_seed": [
                        (r["seed"], r["solved"][key]["solved"], r["solved"][key]["se"]) for r in runs
                    ],
                    "mean": statistics.fmean(rates),
                    "se": statistics.stdev(rates) / math.sqrt(len(rates)) if len(rates) > 1 else None,
                    "s_per_pass": statistics.fmean(r["solved"][key]["s_per_pass"] for r in runs),
                }
            )
    return rows


def _seed_stat(values: list[float]) -> str:
    """`mean ± seed-level s.e.` (the mean alone for one seed)."""
    mean = statistics.fmean(values)
    return f"{mean:+.3f}" + (
        f" ± {statistics.stdev(values) / math.sqrt(len(values)):.3f}" if len(values) > 1 else ""
    )


def verdicts(summary: list[dict]) -> list[str]:
    """Markdown rows: per task, model and step count, the best sampler of each family (by seed mean) and its
    per-seed difference to the best heuristic, mean ± seed-level s.e."""
    lines = [
        "| task | model | steps | best heuristic | best learned − it | best mixed − it | random_ranked − it |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = {(r["task"], r["model"], r["sampler"]): r for r in summary}
    for task, model, key in rows:
        label, steps = key.split("@")
        if label != "confidence":
            continue

        def best(family) -> dict | None:
            found = [rows.get((task, model, f"{name}@{steps}")) for name in family]
            found = [r for r in found if r is not None]
            return max(found, key=lambda r: r["mean"]) if found else None

        heuristic = best(HEURISTICS)
        cells = []
        for family in (LEARNED, MIXED, ("random_ranked",)):
            other = best(family)
            if other is None:
                cells.append("—")
                continue
            difference = [a[1] - b[1] for a, b in zip(other["per_seed"], heuristic["per_seed"])]
            cells.append(f"{other['sampler'].split('@')[0]}: {_seed_stat(difference)}")
        lines.append(
            f"| {task} | {model} | {steps} | {heuristic['sampler'].split('@')[0]} {heuristic['mean']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def order_nll_lines(records: list[dict]) -> list[str]:
    """Markdown rows: per task and model, each order's teacher-forced NLL per puzzle and its gap to a random
    order, seed mean ± seed-level s.e. (per seed: ± the s.e. over puzzles in the JSON)."""
    runs = [r for r in records if "order_nll" in r]
    if not runs:
        return []
    gapped = [o for o in ORDERS if o != "random"]
    lines = [
        "",
        "Teacher-forced NLL of the held-out solutions (nats per puzzle, one blank per pass; exact denoiser: 0 for "
        "every order) beside the model's NELBO per puzzle, seed mean ± seed-level s.e.; gap = order − random, per "
        "seed then averaged:",
        "",
        "| task | model | seeds | NELBO | " + " | ".join([*ORDERS, *(f"gap {o}" for o in gapped)]) + " |",
        "|---|---|---|---|" + "---|" * (len(ORDERS) + len(gapped)),
    ]
    for task, model in dict.fromkeys((r["task"], r["model"]) for r in runs):
        group = [r for r in runs if r["task"] == task and r["model"] == model]
        nll = [_seed_stat([r["order_nll"][o]["nll"] for r in group]) for o in ORDERS]
        gap = [_seed_stat([r["order_nll"][o]["gap_to_random"] for r in group]) for o in gapped]
        nelbo = _seed_stat([r["nelbo_per_puzzle"]["nelbo"] for r in group])
        lines.append(f"| {task} | {model} | {len(group)} | {nelbo} | " + " | ".join(nll + gap) + " |")
    return lines


def markdown(summary: list[dict], records: list[dict]) -> str:
    lines = [
        "| task | model | sampler @ steps | solved per seed (± binomial s.e.) | seed mean ± s.e. | ms / pass |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary:
        seeds = ", ".join(f"{p:.3f} ± {se:.3f}" for _, p, se in row["per_seed"])
        mean = f"{row['mean']:.3f}" + (f" ± {row['se']:.3f}" if row["se"] is not None else "")
        lines.append(
            f"| {row['task']} | {row['model']} | {row['sampler']} | {seeds} | {mean} | "
            f"{1000 * row['s_per_pass']:.1f} |"
        )
    lines += [
        "",
        "| task | model | seed | params | train s / step | final loss | context use (one / all) | "
        "ê ~ known order (Spearman) | ê sd across puzzles at a cell | ê sd within a puzzle |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for r in records:
        e = r.get("exponents", {})
        use = (
            "—"
            if "context_use_ratio" not in r
            else f"{r['context_use_ratio']:.3f} ± {r['context_use_ratio_se']:.3f}"
        )
        lines.append(
            f"| {r['task']} | {r['model']} | {r['seed']} | {r['parameters']} | {r['train_s_per_step']:.3f} | "
            f"{r['final_loss']} | {use} | {e.get('spearman_with_known_order', nan):+.3f} | "
            f"{e.get('sd_across_puzzles_at_a_cell', nan):.4f} | {e.get('sd_within_puzzle', nan):.4f} |"
        )
    lines += [
        "",
        "Best of each family against the best heuristic (per-seed differences):",
        "",
        *verdicts(summary),
    ]
    return "\n".join(lines + order_nll_lines(records))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--tasks", default="sudoku4,add4")
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--ar", action="store_true", help="also train a same-size LlamaForCausalLM")
    parser.add_argument("--seeds", default="0")
    add_training_flags(parser, steps=1000)
    parser.add_argument(
        "--forward_reads_givens",
        action="store_true",
        help="research variant: the forward scheduler reads the puzzle, not the clean row (`GivensForwardLoMDM`)",
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument(
        "--order_nll",
        action="store_true",
        help="also the teacher-forced NLL of the solutions under each order",
    )
    parser.add_argument("--output", default=str(RESULTS / "order_zoo"))
    parser.add_argument(
        "--combine",
        default=None,
        help="comma-separated result JSONs: table their runs together, train nothing",
    )
    args = parser.parse_args(argv)
    unknown = set(args.tasks.split(",")) - set(ZOO)
    if unknown:
        parser.error(f"unknown tasks {sorted(unknown)}; choose from {tuple(ZOO)}")
    command = "python benchmarks/order_zoo_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.combine:  # no training: table the runs of earlier result files together
        records = [r for path in args.combine.split(",") for r in json.loads(Path(path).read_text())["runs"]]
        result = {"command": command, "summary": summarize(records), "runs": records}
        Path(args.output + ".json").write_text(json.dumps(result, indent=2) + "\n")
        Path(args.output + ".md").write_text(markdown(result["summary"], records) + "\n")
        return result
    threads = configure_threads()
    records = []
    for name in args.tasks.split(","):
        task = zoo_task(name)
        test = task.test_puzzles(args.samples)
        for seed in [int(s) for s in args.seeds.split(",")]:
            runs = [
                lambda s=schedule: run_diffusion(task, s, seed, args, test)
                for schedule in args.schedules.split(",")
            ]
            if args.ar:
                runs.append(lambda: run_ar(task, seed, args, test))
            for run in runs:
                record = run()
                records.append(record)
                print(
                    json.dumps({k: record[k] for k in ("task", "model", "seed", "final_loss")}),
                    {k: round(v["solved"], 3) for k, v in record["solved"].items()},
                    flush=True,
                )
                result = {
                    "command": command,
                    "threads": threads,
                    "args": vars(args),
                    "summary": summarize(records),
                    "runs": records,
                }
                Path(args.output).parent.mkdir(parents=True, exist_ok=True)
                Path(args.output + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.output + ".md").write_text(markdown(result["summary"], records) + "\n")
    print(markdown(result["summary"], records))
    return result


if __name__ == "__main__":
    main()
