"""How much signal the learned schedule's gradient carries on text, per estimator (the main-job setting).

The main job (`training/configs/shakespeare-char.yaml`: character tokenizer, 128-character rows, a 4 x 128 LoMDM)
is measured at initialisation and after `--steps` training steps of the package's `LoMDMTrainer` (its defaults
plus the estimator given by `--train-estimator`). At each state, `--batches` independent batches of `--batch`
training rows (fresh rows, fresh noise) give one gradient each of the forward scheduler φ and the reverse
scheduler ψ, for every estimator of `hf_lomdm.objective` (K noisy samples per row):

- norm of the mean gradient, per-batch rms, the per-batch signal-to-noise ratio rho² = |E g|² / tr Cov(g)
  (|E g|² from the mean pairwise dot product, unbiased, may be < 0), and tr Cov relative to K = 2 RLOO; the
  "equal passes" column divides by K / 2 (variance falls as 1 / rows, so K = 1 at twice the rows costs the same
  denoiser passes as K = 2);
- for RLOO, the pathwise part (`plain` with the same K and noise) and the score part (their difference) apart;
- the token table of `ptcv` / `tcv` is estimated on separate batches (z-free for the measured ones).

Adam drift: Adam moves each coordinate by about the learning rate per step with a random sign when the gradient
is noise, i.e. a random walk of sd √(Σ lr²). The prediction perturbs φ by that much and reports the within-row sd
of e it causes on held-out rows, beside the sd seen after the run (and ê on half-masked rows, and Pearson's r of
e with the denoiser's confidence at masked positions: the curriculum signal).

    python benchmarks/scheduler_gradients.py                 # ~15 min on one core: init and step 300
    python benchmarks/scheduler_gradients.py --steps 50 --batches 6 --output /tmp/g.json   # smoke run
    python benchmarks/scheduler_gradients.py --checkpoint runs/shakespeare-char   # a trained model's spread only
    python benchmarks/scheduler_gradients.py --task max --output benchmarks/results/scheduler_gradients_max.json

`--task max` runs the same measurement on a synthetic order task whose right order is known (causes before
effects; a 2 x 64 LoMDM, rows of 16 tokens) and adds the cause contrast of e: the contrast to text, where the
order is worth little.

Spread scan (`--checkpoint` mode): the held-out NELBO of the trained model when its learned deviations from c1 are
scaled by α (c2 -> α c2, forward and reverse together; α = 0 is the fixed `polynomial` schedule on the same
denoiser), split into L_main and L_velocity, under the same random numbers for every α. If the bound keeps falling
for α > 1 the scheduler stopped short of what its own direction is worth (an optimiser problem); if L_velocity
grows as fast as L_main falls, the reverse scheduler's inability to predict e from z_t is what holds the spread.

Prints a Markdown table and writes JSON (`benchmarks/results/scheduler_gradients.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import get_scheduler

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.data import (
    DataArguments,
    DataCollatorForMaskedDiffusion,
    group_texts,
    load_text_datasets,
    tokenizer_config_kwargs,
    train_char_tokenizer,
)
from hf_lomdm.objective import lomdm_loss, stratified_nelbo, update_token_baseline
from hf_lomdm.trainer import LoMDMTrainer, LoMDMTrainingArguments

RESULTS = Path(__file__).parent / "results" / "scheduler_gradients.json"
BLOCK = 128
ARCH = dict(  # training/configs/shakespeare-char.yaml
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=384,
    scheduler_intermediate_size=256,
    scheduler_head_size=64,
    max_position_embeddings=BLOCK,
)
# (estimator, K): `plain` with K = 2 is RLOO's pathwise part under the same noise.
ESTIMATORS = [("rloo", 2), ("plain", 2), ("ptcv", 2), ("tcv", 2), ("tcv", 1)]


def char_rows(seed: int):
    raw = load_text_datasets(DataArguments(block_size=BLOCK))
    tokenizer = train_char_tokenizer(raw["train"]["text"], model_max_length=BLOCK)
    train, val = (group_texts(raw[name], tokenizer, BLOCK, "wrap") for name in ("train", "validation"))
    return (
        tokenizer,
        torch.tensor(train["input_ids"], dtype=torch.long),
        torch.tensor(val["input_ids"], dtype=torch.long),
    )


def scheduler_gradients(model, x, estimator, num_samples, seed, table):
    model.zero_grad()
    res = lomdm_loss(
        model,
        x,
        num_samples=num_samples,
        estimator=estimator,
        generator=torch.Generator().manual_seed(seed),
        token_baseline=table,
    )
    res.loss.backward()
    flat = lambda module: torch.cat([p.grad.flatten() for p in module.parameters()]).double()  # noqa: E731
    return flat(model.forward_scheduler), flat(model.reverse_scheduler)


def moments(grads: torch.Tensor) -> dict[str, float]:
    """Statistics over N per-batch gradients `(N, P)`."""
    n = grads.shape[0]
    total = grads.sum(0)
    mean_sq = (total.dot(total) - (grads * grads).sum()) / (n * (n - 1))  # unbiased |E g|^2
    trace_cov = ((grads - grads.mean(0)) ** 2).sum() / (n - 1)
    return {
        "mean_norm": float(grads.mean(0).norm()),
        "rms": float((grads * grads).sum(1).mean().sqrt()),
        "rho2": float(mean_sq / trace_cov),
        "trace_cov": float(trace_cov),
    }


def token_table(model, rows, batches, batch, seed, vocab_size):
    table = torch.full((vocab_size,), math.log(vocab_size))
    with torch.no_grad():
        for i in range(batches):
            x = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + i))[:batch]]
            res = lomdm_loss(
                model, x, num_samples=1, estimator="plain", generator=torch.Generator().manual_seed(i)
            )
            table = update_token_baseline(table, res, decay=i / (i + 1))  # a running mean over the batches
    return table


def measure(model, rows, args, state_seed):
    table = token_table(model, rows, 4, args.batch, 10_000 + state_seed, model.config.vocab_size)
    grads = {key: ([], []) for key in ESTIMATORS}
    for b in range(args.batches):
        x = rows[
            torch.randperm(len(rows), generator=torch.Generator().manual_seed(state_seed + b))[: args.batch]
        ]
        for estimator, k in ESTIMATORS:
            phi, psi = scheduler_gradients(model, x, estimator, k, seed=b, table=table)
            grads[(estimator, k)][0].append(phi)
            grads[(estimator, k)][1].append(psi)
    stacked = {key: (torch.stack(phi), torch.stack(psi)) for key, (phi, psi) in grads.items()}
    reference = moments(stacked[("rloo", 2)][0])["trace_cov"]
    out = []
    for (estimator, k), (phi, psi) in stacked.items():
        row = {"estimator": estimator, "K": k, "phi": moments(phi), "psi": moments(psi)}
        row["variance_vs_rloo2"] = row["phi"]["trace_cov"] / reference
        row["variance_vs_rloo2_equal_passes"] = row["variance_vs_rloo2"] * k / 2
        out.append(row)
    score = stacked[("rloo", 2)][0] - stacked[("plain", 2)][0]
    out.append({"estimator": "rloo score part", "K": 2, "phi": moments(score)})
    return out


def task_rows(name: str):
    """`--task`: the synthetic order task `name` (8 causes, 8 symbols: `benchmarks/order_tasks.py`'s default) and
    its 2 x 64 LoMDM; rows without BOS, 20k training rows and 512 held-out ones."""
    from order_zoo.synthetic import MASK_ID, order_task

    task = order_task(name)
    rows = {
        split: torch.tensor(task.training_rows(n, torch.Generator().manual_seed(seed))["input_ids"])[:, 1:]
        for split, n, seed in (("train", 20_000, 1000), ("val", 512, 99))
    }
    config = LoMDMConfig(
        vocab_size=task.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=task.length + 1,
        mask_token_id=MASK_ID,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        schedule="lomdm",
        scheduler_intermediate_size=128,
        scheduler_head_size=32,
    )
    return task, rows["train"], rows["val"], config


@torch.no_grad()
def schedule_spread(model, rows, task=None):
    """Within-row sd of e (clean rows), of ê (half-masked rows), and r(e, confidence) at masked positions; for an
    order task also the contrast mean e(causes) - mean e(effects) (> 0: causes first, the right order)."""
    generator = torch.Generator().manual_seed(0)
    half = torch.rand(rows.shape, generator=generator) < 0.5
    e = model.forward_exponents(rows)
    out = model(rows.masked_fill(half, model.config.mask_token_id))
    confidence = out.logits.gather(-1, rows[..., None]).squeeze(-1).exp()[half]
    pair = torch.stack([e[half].double(), confidence.double()])
    spread = {
        "e_sd": float(e.std(-1).mean()),
        "e_hat_sd": float(out.reverse_exponents.std(-1).mean()),
        "r_e_confidence": float(torch.corrcoef(pair)[0, 1]) if float(e[half].std()) > 0 else math.nan,
    }
    if task is not None:
        from order_zoo.synthetic import exponent_contrast

        spread["cause_contrast"] = exponent_contrast(e, task.cause_mask)
    return spread


@torch.no_grad()
def spread_scan(model, rows, scales, time_samples: int = 8, seed: int = 0):
    """Per-token held-out NELBO (nats) and its parts at c2 -> α c2; paired differences to α = 1 (± s.e. over rows).
    Scales that push an exponent below the schedule's floor c1 - c2 are skipped."""
    c2 = model.c2
    parts = {}
    try:
        for scale in scales:
            model.c2 = scale * c2
            e = model.forward_exponents(rows)
            if float(e.min()) < model.c1 - c2:  # below the schedule's own floor
                continue
            res = stratified_nelbo(
                model, rows, time_samples=time_samples, generator=torch.Generator().manual_seed(seed)
            )
            per_row = {
                name: getattr(res, name).double().mean(0) / res.num_tokens.double()
                for name in ("nelbo", "loss_main", "loss_velocity")
            }  # (B,) nats per token of each row
            parts[scale] = {**per_row, "e_sd": float(e.std(-1).mean())}
    finally:
        model.c2 = c2
    reference = parts[1.0]["nelbo"] if 1.0 in parts else None
    table = []
    for scale, per_row in parts.items():
        row = {"scale": scale, "e_sd": per_row["e_sd"]}
        for name in ("nelbo", "loss_main", "loss_velocity"):
            row[name] = float(per_row[name].mean())
        if reference is not None:
            diff = per_row["nelbo"] - reference
            row["nelbo_minus_trained"] = float(diff.mean())
            row["nelbo_minus_trained_se"] = float(diff.std() / math.sqrt(len(diff)))
        table.append(row)
    return table


@torch.no_grad()
def random_walk_prediction(model, rows, s2: float, draws: int = 4):
    """Within-row sd of e after perturbing every φ weight by N(0, √S2): Adam's walk under a pure-noise gradient."""
    state = {n: p.clone() for n, p in model.forward_scheduler.named_parameters()}
    sds = []
    for d in range(draws):
        g = torch.Generator().manual_seed(d)
        for name, p in model.forward_scheduler.named_parameters():
            p.copy_(state[name] + math.sqrt(s2) * torch.randn(p.shape, generator=g))
        sds.append(float(model.forward_exponents(rows).std(-1).mean()))
    for name, p in model.forward_scheduler.named_parameters():
        p.copy_(state[name])
    return sum(sds) / len(sds)


def main_job_trainer(
    model, rows: torch.Tensor, output_dir: str, steps: int, seed: int, **extra
) -> LoMDMTrainer:
    """`LoMDMTrainer` with the main job's optimisation (16 rows, AdamW 2e-3, 40 warm-up steps, cosine), no saving;
    `extra` overrides training arguments (estimator, K, scheduler start)."""
    return LoMDMTrainer(
        model=model,
        args=LoMDMTrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=16,
            learning_rate=2e-3,
            warmup_steps=40,
            lr_scheduler_type="cosine",
            logging_steps=50,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=seed,
            **extra,
        ),
        train_dataset=Dataset.from_dict({"input_ids": rows.tolist()}),
        data_collator=DataCollatorForMaskedDiffusion(pad_token_id=model.config.pad_token_id),
    )


def train(model, rows, args):
    trainer = main_job_trainer(
        model,
        rows,
        args.run_dir,
        args.steps,
        args.seed,
        estimator=args.train_estimator,
        num_noise_samples=1 if args.train_estimator == "tcv" else 2,
        scheduler_start_step=args.scheduler_start_step,
    )
    # The schedulers' learning rate per step, as the Trainer runs it: 0 before the start, then the common schedule.
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
    schedule = get_scheduler("cosine", dummy, num_warmup_steps=40, num_training_steps=args.steps)
    s2 = 0.0
    for step in range(args.steps):
        s2 += 0.0 if step < args.scheduler_start_step else schedule.get_last_lr()[0] ** 2
        dummy.step()
        schedule.step()
    trainer.train()
    return s2, [e for e in trainer.state.log_history if "loss" in e]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps between the two states")
    parser.add_argument("--batches", type=int, default=24, help="independent batches per estimator and state")
    parser.add_argument("--batch", type=int, default=16, help="rows per batch")
    parser.add_argument("--train-estimator", "--train_estimator", default="tcv", choices=["rloo", "tcv"])
    parser.add_argument("--scheduler-start-step", "--scheduler_start_step", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", "--run_dir", default="/tmp/scheduler_gradients_run")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument(
        "--task",
        default=None,
        choices=["max", "sort", "add"],
        help="measure on this synthetic order task (benchmarks/order_zoo/synthetic.py) instead of the main job's text",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="only report the schedule spread of this trained main-job checkpoint",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.task is not None:
        task, train_rows, val_rows, config = task_rows(args.task)
    else:
        task = None
        tokenizer, train_rows, val_rows = char_rows(args.seed)
        config = LoMDMConfig(**tokenizer_config_kwargs(tokenizer), schedule="lomdm", **ARCH)
    if args.checkpoint is not None:
        trained = LoMDMForMaskedDiffusion.from_pretrained(args.checkpoint).eval()
        spread = schedule_spread(trained, val_rows[:64])
        print(f"{args.checkpoint}: " + ", ".join(f"{k} {v:+.5f}" for k, v in spread.items()))
        scan = spread_scan(trained, val_rows[:128], [0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
        print("| α (c2 scale) | e sd | NELBO | L_main | L_velocity | NELBO − trained (± s.e.) |  (nats/char)")
        print("|---|---|---|---|---|---|")
        for row in scan:
            print(
                f"| {row['scale']:g} | {row['e_sd']:.4f} | {row['nelbo']:.4f} | {row['loss_main']:.4f} | "
                f"{row['loss_velocity']:.5f} | "
                f"{row['nelbo_minus_trained']:+.4f} ± {row['nelbo_minus_trained_se']:.4f} |"
            )
        if args.output != str(RESULTS):
            Path(args.output).write_text(
                json.dumps({"checkpoint": args.checkpoint, **spread, "spread_scan": scan}, indent=1) + "\n"
            )
        return
    torch.manual_seed(args.seed)
    model = LoMDMForMaskedDiffusion(config).train()
    held_out = val_rows[:64]
    start = time.perf_counter()
    record = {"args": vars(args), "states": {}}
    record["states"]["init"] = {
        "gradients": measure(model, train_rows, args, 0),
        **schedule_spread(model, held_out, task),
    }
    s2, logs = train(model, train_rows, args)
    model.train()
    after = {"gradients": measure(model, train_rows, args, 1), **schedule_spread(model, held_out, task)}
    after["predicted_e_sd_random_walk"] = random_walk_prediction(model, held_out, s2)
    after["train_logs"] = logs
    record["states"][f"step {args.steps}"] = after
    record["seconds"] = time.perf_counter() - start

    print(
        "| state | estimator | K | φ mean norm | φ rms | φ rho² | tr Cov ÷ RLOO-2 | same, equal passes | ψ rho² |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for state, res in record["states"].items():
        for row in res["gradients"]:
            psi = f"{row['psi']['rho2']:+.3f}" if "psi" in row else "-"
            ratio = row.get("variance_vs_rloo2")
            equal = row.get("variance_vs_rloo2_equal_passes")
            print(
                f"| {state} | {row['estimator']} | {row['K']} | {row['phi']['mean_norm']:.4f} | "
                f"{row['phi']['rms']:.4f} | {row['phi']['rho2']:+.3f} | "
                f"{'-' if ratio is None else f'{ratio:.3f}'} | {'-' if equal is None else f'{equal:.3f}'} | {psi} |"
            )
    for state, res in record["states"].items():
        line = (
            f"{state}: within-row sd e {res['e_sd']:.5f}, ê {res['e_hat_sd']:.5f}, "
            f"r(e, conf) {res['r_e_confidence']:+.3f}"
        )
        if "cause_contrast" in res:
            line += f", cause contrast of e {res['cause_contrast']:+.4f}"
        if "predicted_e_sd_random_walk" in res:
            line += f"; Adam random walk predicts e sd {res['predicted_e_sd_random_walk']:.5f}"
        print(line)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
