"""Sampling speed and quality of a trained LoMDM against an autoregressive model with a KV cache, same dimensions.

    lomdm-train training/configs/shakespeare-char.yaml          # the main job (8 min on one core)
    python benchmarks/sampling_trained.py --checkpoint runs/shakespeare-char

Untrained weights are never confident, so threshold decoding on them says nothing (`benchmarks/sampling.py`
measures speed only); this script uses a trained checkpoint. For batch 1 and `--batch` rows it generates
`--new_tokens` tokens after a `<bos>` prompt with: the learned order at L / 4 and L steps, random order at L steps,
confidence decoding with thresholds, and `LlamaForCausalLM.generate` (KV cache) of the same width, depth, heads,
feed-forward width and vocabulary. The AR model has random weights: it measures the speed an AR model of this size
would have, not its quality (no trained AR model of this size is saved). Quality of the diffusion samples: their
SmolLM2 gen-PPL (`evaluation.load_judge("smollm2")`, on the decoded text) and unigram entropy, compared with the
model's own learned-order samples at L steps. Medians over `--repeats` timings; one thread.
Writes `benchmarks/results/sampling_trained.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hf_lomdm.evaluation import bos_prompt, generative_perplexity, load_judge
from hf_lomdm.runtime import configure_threads

RESULTS = Path(__file__).parent / "results" / "sampling_trained"


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="runs/shakespeare-char")
    parser.add_argument("--new_tokens", type=int, default=127)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--thresholds", default="0.9,0.7,0.5")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    threads = configure_threads()
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForMaskedLM.from_pretrained(args.checkpoint).eval()
    ar = ar_model(model.config)
    judge, judge_tokenizer = load_judge("smollm2")
    length = args.new_tokens
    settings = [
        ("learned", {"order": "learned", "steps": length // 4}),
        ("learned", {"order": "learned", "steps": length}),
    ]
    settings += [("random", {"order": "random", "steps": length})]
    settings += [
        ("confidence+threshold", {"order": "confidence", "steps": None, "threshold": float(t)})
        for t in args.thresholds.split(",")
    ]
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
            {
                "model": "llama-ar (KV cache, random weights)",
                "batch": batch,
                "steps": length,
                "tokens_per_s": ar_speed,
                "passes": length,
            }
        )
        for name, kwargs in settings:
            seconds, out = timed(
                lambda: model.generate(
                    prompt,
                    max_new_tokens=length,
                    eos_token_id=[],
                    return_dict_in_generate=True,
                    generator=torch.Generator().manual_seed(0),
                    **kwargs,
                ),
                args.repeats,
            )
            row = {
                "model": "lomdm",
                "order": name,
                **{k: v for k, v in kwargs.items() if k != "order"},
                "batch": batch,
                "tokens_per_s": batch * length / seconds,
                "passes": out.nfe.float().mean().item(),
                "vs_ar": batch * length / seconds / ar_speed,
            }
            if batch == args.batch:  # quality over the larger batch's samples
                texts = tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
                score = generative_perplexity(texts, judge=judge, judge_tokenizer=judge_tokenizer)
                row.update(gen_ppl=score.gen_ppl, entropy=score.entropy, sample=texts[0][:80])
            rows.append(row)
            print(json.dumps(row), flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(
        json.dumps({"settings": vars(args), "threads": threads, "rows": rows}, indent=2)
    )
    lines = [
        "| batch | sampler | steps | threshold | passes | tokens/s | vs AR | gen-PPL | entropy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r.get('order', r['model'])} | {r.get('steps')} | {r.get('threshold', '')} | "
            f"{r['passes']:.0f} | {r['tokens_per_s']:.0f} | {r.get('vs_ar', 1.0):.2f} | "
            f"{r.get('gen_ppl', float('nan')):.1f} | {r.get('entropy', float('nan')):.2f} |"
        )
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
