"""Sampling speed and quality of a trained LoMDM, with and without the block KV cache, against an autoregressive
model with a KV cache of the same dimensions.

    lomdm-train training/configs/shakespeare-char.yaml          # the main job (8 min on one core)
    python benchmarks/sampling_trained.py --checkpoint runs/shakespeare-char

For batch 1 and `--batch` rows it generates `--new_tokens` tokens after a `<bos>` prompt with every order (the
learned order at L / 4 and L steps, `learned_ranked`, random, confidence, confidence + threshold, margin, entropy,
left to right), first without blocks, then for each block length of `--blocks` (the headline orders; the others
at the middle one) without cache, with `cache_implementation="prefix"` and with `"dual"`, and times
`LlamaForCausalLM.generate` (KV cache) of the same width, depth, heads, feed-forward width and vocabulary in the
same process. The AR model has random weights: it measures the speed an AR model of this size would have, not its
quality. Medians over `--repeats` timings; one thread.

Per row: passes (`nfe`) and positions computed per generated token (`computed_positions`), tokens/s and the ratio
to the AR model. At the larger batch, quality: the NELBO of the samples under the model without cache (its s.e.),
unigram entropy (s.e. over samples) and, with `--judge` (default SmolLM2, `evaluation.load_judge`; `none` skips
it), gen-PPL from the mean judge NLL per sample with its s.e. over samples; for a cached run, the
share of generated tokens that differ from the uncached run with the same block length and generator (s.e. over
rows). For the learned order with the cache, the reverse exponents ê and the denoiser of every cached pass are
compared with a fresh whole-canvas pass on the same canvas (mean |Δê| at the block's masked positions, and the
KL divergence of the fresh from the cached denoiser there). `--seeds N` pools the quality columns over N generator
seeds (timings use seed 0); `--samplers` runs a subset.

Writes `benchmarks/results/sampling_trained.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import hf_lomdm  # noqa: F401  (registers the LoMDM auto classes)
from hf_lomdm.evaluation import (
    bos_prompt,
    generative_perplexity,
    load_judge,
    nelbo_perplexity,
    unigram_entropy,
)
from hf_lomdm.runtime import configure_threads

RESULTS = Path(__file__).parent / "results" / "sampling_trained"
HEADLINE = ("learned L/4", "learned L", "learned_ranked L/4", "confidence+threshold 0.9")


def ar_model(config) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_position_embeddings,
            bos_token_id=config.bos_token_id,
            eos_token_id=None,
            pad_token_id=config.pad_token_id,
        )
    ).eval()


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def sampler_settings(length: int) -> dict[str, dict]:
    quarter = length // 4
    return {
        "learned L/4": {"order": "learned", "steps": quarter},
        "learned L": {"order": "learned", "steps": length},
        "learned_ranked L/4": {"order": "learned_ranked", "steps": quarter},
        "random L/4": {"order": "random", "steps": quarter},
        "confidence L/4": {"order": "confidence", "steps": quarter},
        "confidence+threshold 0.9": {"order": "confidence", "steps": None, "threshold": 0.9},
        "margin L/4": {"order": "margin", "steps": quarter},
        "entropy L/4": {"order": "entropy", "steps": quarter},
        "left_to_right L/4": {"order": "left_to_right", "steps": quarter},
    }


def quality(model, sequences: torch.Tensor, generated: torch.Tensor, texts: list[str], judge) -> dict:
    """NELBO (nats per token) of the samples under the model without cache, with its s.e.; unigram entropy of
    the generated token ids, with its s.e. over samples; with a judge, gen-PPL = exp(mean per-sample judge NLL)
    and the s.e. of that mean (delta method)."""
    bound = nelbo_perplexity(model, sequences, time_samples=8, generator=torch.Generator().manual_seed(0))
    entropy_mean, entropy_se = mean_se([unigram_entropy(row) for row in generated.tolist()])
    result = {
        "nelbo": bound.nelbo,
        "nelbo_se": bound.stderr,
        "entropy": entropy_mean,
        "entropy_se": entropy_se,
    }
    if judge is not None:
        judge_model, judge_tokenizer = judge
        nll = [
            generative_perplexity([text], judge=judge_model, judge_tokenizer=judge_tokenizer).nll
            for text in texts
        ]
        nll_mean, nll_se = mean_se(nll)
        result.update(gen_ppl=math.exp(nll_mean), gen_ppl_se=math.exp(nll_mean) * nll_se)
    return result


class CachedPassProbe:
    """Compares every cached pass of `model.generate` with a fresh whole-canvas pass on the same canvas."""

    def __init__(self, model):
        self.model = model
        self.cached_denoise = model._cached_denoise
        self.e_diff: list[float] = []
        self.e_fresh: list[float] = []
        self.kl: list[float] = []

    def __enter__(self):
        def probe(sampler, rows, allowed_tokens, cache):
            log_probs, e_hat, computed = self.cached_denoise(sampler, rows, allowed_tokens, cache)
            fresh_log_probs, fresh_e_hat, _ = self.model._denoise(sampler, rows, allowed_tokens, None)
            at = sampler.masked()[rows]  # (R, L): the positions the sampler reads
            if e_hat is not None:
                self.e_diff.append((e_hat - fresh_e_hat)[at].abs().mean().item())
                self.e_fresh.append(fresh_e_hat[at].mean().item())
            p = fresh_log_probs[at].exp()
            self.kl.append((p * (fresh_log_probs[at] - log_probs[at])).nan_to_num().sum(-1).mean().item())
            return log_probs, e_hat, computed

        self.model._cached_denoise = probe
        return self

    def __exit__(self, *exc):
        del self.model._cached_denoise  # back to the class's method


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="runs/shakespeare-char")
    parser.add_argument("--new_tokens", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--blocks", default="8,16,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--judge", default="smollm2", help="judge LM for gen-PPL, or 'none'")
    parser.add_argument("--seeds", type=int, default=1, help="generator seeds pooled for the quality columns")
    parser.add_argument(
        "--samplers", default="", help="comma-separated names of `sampler_settings` (default: all)"
    )
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    threads = configure_threads()
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForMaskedLM.from_pretrained(args.checkpoint).eval()
    ar = ar_model(model.config)
    judge = None if args.judge == "none" else load_judge(args.judge)
    length = args.new_tokens
    blocks = [int(b) for b in args.blocks.split(",")]
    rows = []
    for batch in (1, args.batch):
        prompt = bos_prompt(tokenizer, batch)
        ar_seconds, _ = timed(
            lambda: ar.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=length,
                min_new_tokens=length,
                do_sample=True,
                top_k=0,
                use_cache=True,
            ),
            args.repeats,
        )
        ar_speed = batch * length / ar_seconds
        rows.append(
            {"sampler": "llama-ar (KV cache)", "batch": batch, "tokens_per_s": ar_speed, "passes": length}
        )
        print(json.dumps(rows[-1]), flush=True)
        for name, kwargs in sampler_settings(length).items():
            if args.samplers and name not in args.samplers.split(","):
                continue
            runs = [(None, None)] + [
                (block, cache)
                for block in (blocks if name in HEADLINE else blocks[len(blocks) // 2 : len(blocks) // 2 + 1])
                for cache in (None, "prefix", "dual")
            ]
            uncached = {}
            for block, cache in runs:
                row = run_one(model, prompt, length, kwargs, block, cache, args.repeats, ar_speed)
                row.update(sampler=name, batch=batch)
                if batch == args.batch:
                    setting = (model, prompt, length, kwargs, block, cache)
                    row.update(quality_columns(setting, tokenizer, judge, args.seeds, uncached))
                rows.append(row)
                print(json.dumps(row), flush=True)
    write(rows, args, threads)


def generate(model, prompt, length, kwargs, block, cache, seed: int = 0):
    return model.generate(
        prompt,
        max_new_tokens=length,
        block_length=block,
        cache_implementation=cache,
        eos_token_id=[],
        return_dict_in_generate=True,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def run_one(model, prompt, length, kwargs, block, cache, repeats, ar_speed) -> dict:
    seconds, out = timed(lambda: generate(model, prompt, length, kwargs, block, cache), repeats)
    batch = prompt.shape[0]
    return {
        "block_length": block,
        "cache": cache,
        "tokens_per_s": batch * length / seconds,
        "vs_ar": batch * length / seconds / ar_speed,
        "passes": out.nfe.double().mean().item(),
        "positions_per_token": out.computed_positions.double().mean().item() / length,
        "positions_per_pass": (out.computed_positions.double() / out.nfe).mean().item(),
    }


def quality_columns(setting: tuple, tokenizer, judge, seeds: int, uncached: dict) -> dict:
    """Quality of the samples of `seeds` generator seeds, pooled; for a cached setting, the share of generated
    tokens that differ from the uncached run with the same blocks and seeds (stored in `uncached` by block)."""
    model, prompt, length, kwargs, block, cache = setting
    sequences = torch.cat([generate(*setting, seed=seed).sequences for seed in range(seeds)])
    generated = sequences[:, prompt.shape[1] :]
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
    columns = {
        "samples": len(texts),
        **quality(model, sequences, generated, texts, judge),
        "sample": texts[0][:80],
    }
    if cache is None:
        uncached[block] = generated
    else:
        columns["differ"], columns["differ_se"] = mean_se(
            (generated != uncached[block]).double().mean(-1).tolist()
        )
    if cache is not None and kwargs["order"] == "learned":
        with CachedPassProbe(model) as probe:
            generate(*setting)
        columns.update(
            e_hat_abs_diff=statistics.fmean(probe.e_diff),
            e_hat_mean=statistics.fmean(probe.e_fresh),
            kl_fresh_cached=statistics.fmean(probe.kl),
        )
    return columns


def write(rows: list[dict], args, threads: int) -> None:
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(
        json.dumps({"settings": vars(args), "threads": threads, "rows": rows}, indent=2)
    )
    lines = [
        "| batch | sampler | block | cache | passes | positions / token | tokens/s | vs AR | NELBO | gen-PPL "
        "| entropy | tokens ≠ uncached | mean abs Δê | KL(fresh ‖ cached) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(row, key, digits, se=None):
        if key not in row:
            return ""
        text = f"{row[key]:.{digits}f}"
        return text + (f" ± {row[se]:.{digits}f}" if se and se in row else "")

    for r in rows:
        cells = [
            str(r["batch"]),
            r["sampler"],
            str(r.get("block_length") or ""),
            r.get("cache") or "",
            f"{r['passes']:.0f}",
            fmt(r, "positions_per_token", 1),
            f"{r['tokens_per_s']:.0f}",
            f"{r.get('vs_ar', 1.0):.2f}",
            fmt(r, "nelbo", 3, "nelbo_se"),
            fmt(r, "gen_ppl", 0, "gen_ppl_se"),
            fmt(r, "entropy", 2, "entropy_se"),
            fmt(r, "differ", 2, "differ_se"),
            f"{r['e_hat_abs_diff']:.1e} (ê ≈ {r['e_hat_mean']:.3f})" if "e_hat_abs_diff" in r else "",
            fmt(r, "kl_fresh_cached", 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
