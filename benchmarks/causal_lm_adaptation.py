"""A LoMDM converted from SmolLM2-135M, before and after adaptation: bound, context use, schedules, samples.

    lomdm-convert smollm2 runs/smollm2-lomdm --max_position_embeddings 128
    lomdm-train training/configs/smollm2-shakespeare.yaml
    python benchmarks/causal_lm_adaptation.py                          # both checkpoints, ~15 min on one core
    python benchmarks/causal_lm_adaptation.py --models before=runs/smollm2-lomdm   # one checkpoint

For each checkpoint (`name=path`; a LoRA adapter folder is merged into its base) and each text — the held-out
Shakespeare plays (the adaptation's validation split) and a text nobody tuned on (the prose of Python's own
documentation, `pydoc_data.topics`, shipped with every Python) — in `block_size`-token rows:

1. the NELBO bound per token (importance-sampled times, L_velocity included) over positions 1..L-1, and SmolLM2's
   own autoregressive NLL of exactly those tokens given the prefix (position 0 is context for both);
2. context use: loss of a token with every other token visible vs with everything masked (ratio ~1 = no context);
3. the schedules: forward exponents e on the clean rows and reverse exponents ê at t = 0.5, their spread over
   positions, and the correlation of e with the AR model's per-token NLL (negative: easy tokens revealed first);
4. samples: `sample_count` continuations of a short prompt with `order="learned"` vs `"random"` at equal steps,
   scored by SmolLM2 (gen-PPL) with their unigram entropy.

Results are merged into `--output` (JSON, one entry per checkpoint) and printed as Markdown tables (also written).
The `--card_for` checkpoint is saved merged to `--card_dir` with a model card, copied to `model_cards/`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from hf_lomdm import LoMDMForMaskedDiffusion
from hf_lomdm.data import DataArguments, group_texts, load_text_datasets
from hf_lomdm.evaluation import context_use, generative_perplexity, load_smollm2_judge, nelbo_perplexity
from hf_lomdm.runtime import configure_threads

RESULTS = Path(__file__).parent / "results" / "causal_lm_adaptation"


def load_checkpoint(path: str):
    """`(model, tokenizer)`; a PEFT adapter folder is loaded on its base and merged."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if os.path.exists(os.path.join(path, "adapter_config.json")):
        from peft import PeftConfig, PeftModel

        base = AutoModelForMaskedLM.from_pretrained(PeftConfig.from_pretrained(path).base_model_name_or_path)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        model = AutoModelForMaskedLM.from_pretrained(path)
    return model.eval(), tokenizer


def text_rows(tokenizer, block_size: int, num_rows: int) -> dict[str, torch.Tensor]:
    """`{"plays": (N, block), "python_docs": (N, block)}`: packed rows of the two texts."""
    from pydoc_data.topics import topics

    from datasets import Dataset

    plays = load_text_datasets(DataArguments())["validation"]
    docs = Dataset.from_list([{"text": text} for _, text in sorted(topics.items())])
    out = {}
    for name, documents in (("plays", plays), ("python_docs", docs)):
        rows = group_texts(documents, tokenizer, block_size, "wrap")["input_ids"][:num_rows]
        out[name] = torch.tensor(rows)
    return out


@torch.no_grad()
def ar_token_nll(judge, rows: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """(N, L-1) NLL of token i given tokens < i under the causal LM, for i = 1..L-1."""
    nll = []
    for start in range(0, len(rows), batch_size):
        x = rows[start : start + batch_size]
        log_probs = torch.log_softmax(judge(x).logits.float(), dim=-1)[:, :-1]  # (B, L-1, V)
        nll.append(-log_probs.gather(-1, x[:, 1:, None]).squeeze(-1))
    return torch.cat(nll)


@torch.no_grad()
def schedule_statistics(model: LoMDMForMaskedDiffusion, rows: torch.Tensor, token_nll: torch.Tensor) -> dict:
    """Spread of e (clean rows) and ê (t = 0.5 masks) over positions 1..L-1, and corr(e, AR NLL)."""
    noise_mask = torch.ones_like(rows, dtype=torch.bool)
    noise_mask[:, 0] = False
    e = model.forward_exponents(rows, noise_mask=noise_mask)[:, 1:]
    generator = torch.Generator().manual_seed(0)
    masked = (torch.rand(rows.shape, generator=generator) < 0.5) & noise_mask
    z = rows.masked_fill(masked, model.config.mask_token_id)
    e_hat = model(z, noise_mask=noise_mask).reverse_exponents[:, 1:]
    centred_e = e - e.mean(1, keepdim=True)
    centred_nll = token_nll - token_nll.mean(1, keepdim=True)
    corr = (centred_e * centred_nll).sum() / (centred_e.norm() * centred_nll.norm()).clamp_min(1e-12)
    return {
        "e_mean": e.mean().item(),
        "e_sd_within_row": e.std(1).mean().item(),
        "e_min": e.min().item(),
        "e_max": e.max().item(),
        "e_hat_mean": e_hat.mean().item(),
        "e_hat_sd_within_row": e_hat.std(1).mean().item(),
        "corr_e_ar_nll": corr.item(),
    }


@torch.no_grad()
def samples(
    model, tokenizer, judge, judge_tokenizer, prompts: torch.Tensor, new_tokens: int, steps: int
) -> dict:
    out = {}
    for order in ("learned", "random"):
        start = time.perf_counter()
        sequences = model.generate(
            prompts,
            max_new_tokens=new_tokens,
            steps=steps,
            order=order,
            generator=torch.Generator().manual_seed(0),
        )
        seconds = time.perf_counter() - start
        texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
        # Same vocabulary as the judge: score the token ids (prompt included, as context of the first token).
        score = generative_perplexity(judge=judge, token_ids=sequences.tolist())
        out[order] = {"gen_ppl": score.gen_ppl, "entropy": score.entropy, "seconds": seconds, "texts": texts}
    return out


def evaluate(name: str, path: str, judge, judge_tokenizer, args) -> dict:
    model, tokenizer = load_checkpoint(path)
    block_size = min(args.block_size, model.config.max_position_embeddings)
    report = {"checkpoint": path, "schedule": model.config.schedule, "shift": model.config.shift, "texts": {}}
    for text, rows in text_rows(tokenizer, block_size, args.rows).items():
        token_nll = ar_token_nll(judge, rows)
        labels = rows.clone()
        labels[:, 0] = -100  # position 0 is context for both models
        bound = nelbo_perplexity(
            model,
            [{"input_ids": row, "labels": label} for row, label in zip(rows, labels)],
            time_samples=args.time_samples,
            batch_size=8,
            generator=torch.Generator().manual_seed(0),
        )
        context = context_use(
            model,
            rows,
            max_sequences=args.context_rows,
            batch_size=8,
            generator=torch.Generator().manual_seed(0),
        )
        report["texts"][text] = {
            "rows": len(rows),
            "tokens": bound.num_tokens,
            "nelbo": bound.nelbo,
            "nelbo_stderr": bound.stderr,
            "ar_nll": token_nll.mean().item(),
            "context_ratio": context.ratio,
            "context_use": context.to_dict(),
            "schedules": schedule_statistics(model, rows, token_nll),
        }
        print(
            f"[{name}] {text}: NELBO {bound.nelbo:.3f} ± {bound.stderr:.3f}, AR NLL {token_nll.mean():.3f}, "
            f"context ratio {context.ratio:.2f}",
            file=sys.stderr,
        )
    prompts = text_rows(tokenizer, args.prompt_tokens, args.sample_count)["plays"]
    report["samples"] = samples(
        model, tokenizer, judge, judge_tokenizer, prompts, args.new_tokens, args.steps
    )
    report["sample_settings"] = {
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "steps": args.steps,
        "count": args.sample_count,
    }
    if name == args.card_for:
        write_card(model, tokenizer, report, args.card_dir)
    return report


def write_card(model, tokenizer, report: dict, directory: str) -> None:
    """Save the merged model with a model card filled from `report`, and copy the card to `model_cards/`."""
    import shutil

    from hf_lomdm.model_card import write_model_card

    plays = report["texts"]["plays"]
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_model_card(
        directory,
        model,
        tokenizer,
        eval_metrics={
            "nelbo": plays["nelbo"],
            "ppl_bound": math.exp(plays["nelbo"]),
            "tokens": plays["tokens"],
            "stderr": plays["nelbo_stderr"],
        },
        samples=report["samples"]["learned"]["texts"],
        context_use=plays["context_use"],
        repo_id=directory,
        training_data="Converted from SmolLM2-135M-Instruct (`lomdm-convert smollm2`, shift option) and adapted with "
        "LoRA (schedulers trained in full) by `training/configs/smollm2-shakespeare.yaml`; "
        "`benchmarks/causal_lm_adaptation.py` measured this card's numbers.",
    )
    shutil.copy(
        Path(directory) / "README.md", Path(__file__).parents[1] / "model_cards" / "smollm2-shakespeare.md"
    )


def markdown(results: dict) -> str:
    lines = [
        "| checkpoint | text | NELBO bound (nats/token) | SmolLM2 AR NLL | context ratio | e sd | ê sd | "
        "corr(e, AR NLL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, report in results.items():
        for text, r in report["texts"].items():
            s = r["schedules"]
            lines.append(
                f"| {name} | {text} | {r['nelbo']:.3f} ± {r['nelbo_stderr']:.3f} | {r['ar_nll']:.3f} | "
                f"{r['context_ratio']:.2f} | {s['e_sd_within_row']:.4f} | {s['e_hat_sd_within_row']:.4f} | "
                f"{s['corr_e_ar_nll']:+.3f} |"
            )
    lines += ["", "| checkpoint | order | gen-PPL (SmolLM2) | entropy | seconds |", "|---|---|---|---|---|"]
    for name, report in results.items():
        for order, s in report["samples"].items():
            lines.append(
                f"| {name} | {order} | {s['gen_ppl']:.1f} | {s['entropy']:.2f} | {s['seconds']:.1f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["before=runs/smollm2-lomdm", "after=runs/smollm2-shakespeare"],
        help="name=path pairs",
    )
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--rows", type=int, default=24, help="rows per text")
    parser.add_argument("--time_samples", type=int, default=2)
    parser.add_argument("--context_rows", type=int, default=16)
    parser.add_argument("--sample_count", type=int, default=4)
    parser.add_argument("--prompt_tokens", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument(
        "--card_for", default="after", help="checkpoint name whose merged model gets a model card"
    )
    parser.add_argument("--card_dir", default="runs/smollm2-shakespeare-merged")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    configure_threads()
    torch.manual_seed(0)
    judge, judge_tokenizer = load_smollm2_judge()
    output = Path(args.output)
    results = (
        json.loads(output.with_suffix(".json").read_text())["checkpoints"]
        if output.with_suffix(".json").exists()
        else {}
    )
    for pair in args.models:
        name, path = pair.split("=", 1)
        results[name] = evaluate(name, path, judge, judge_tokenizer, args)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.with_suffix(".json").write_text(
            json.dumps({"settings": vars(args), "checkpoints": results}, indent=2)
        )
    table = markdown(results)
    output.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
