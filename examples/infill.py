"""Infilling: every mask token in the input is a position to fill; all other tokens stay as they are.

python examples/infill.py --model path/to/checkpoint
python examples/infill.py --model path/to/checkpoint --text "To be, or [MASK] to be" --span 4 --order learned
"""

from __future__ import annotations

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

import hf_lomdm  # noqa: F401  (registers the LoMDM auto classes)
from hf_lomdm.cli.common import ArgumentParser, UsageError, from_pretrained, run_cli

parser = ArgumentParser(description=__doc__)
parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (with its tokenizer)")
parser.add_argument(
    "--text",
    default="To be, or [MASK] to be: that is the question.",
    help="text with [MASK] where a span should be filled",
)
parser.add_argument("--span", type=int, default=6, help="mask tokens per [MASK]")
parser.add_argument(
    "--order", default="learned", help="learned, random, confidence, margin, entropy, left_to_right"
)
parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: one token per pass)")
parser.add_argument("--samples", type=int, default=3, help="filled copies of the text")
parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")


def main(argv: list[str]) -> None:
    args = parser.parse_args(argv)

    for name in ("span", "samples"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}.")
    if "[MASK]" not in args.text:
        raise UsageError(f"--text {args.text!r} has no [MASK] to fill.")
    tokenizer = from_pretrained(AutoTokenizer, args.model, "--model")
    model = from_pretrained(AutoModelForMaskedLM, args.model, "--model").eval()

    # 1. Build the canvas: <bos>, the text's tokens, and `span` mask tokens for every [MASK].
    ids = [tokenizer.bos_token_id]
    for i, piece in enumerate(args.text.split("[MASK]")):
        if i:
            ids += [tokenizer.mask_token_id] * args.span
        ids += tokenizer(piece, add_special_tokens=False).input_ids
    canvas = torch.tensor([ids]).repeat(args.samples, 1)

    # 2. Fill it (max_new_tokens=0: nothing is appended) and check that no given token moved.
    out = model.generate(
        canvas,
        max_new_tokens=0,
        order=args.order,
        steps=args.steps,
        return_dict_in_generate=True,
        output_order=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    kept = canvas != tokenizer.mask_token_id
    assert torch.equal(out.sequences[kept], canvas[kept])
    for row, order in zip(out.sequences, out.order):
        print(tokenizer.decode(row, skip_special_tokens=True).replace("\n", " / "))
        filled = [(tokenizer.decode([t]), o) for t, o in zip(row.tolist(), order.tolist()) if o >= 0]
        print("   filled tokens (token, pass that revealed it):", filled)


if __name__ == "__main__":
    run_cli("infill.py", main)
