"""Heat map of the learned reveal order over a generated text (saved as PNG; needs the `plot` extra).
Each cell is one token, coloured by the pass that revealed it: darker = earlier (viridis, purple -> yellow).

    python examples/plot_order.py --model path/to/checkpoint --output outputs/reveal_order.png
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

import hf_lomdm  # noqa: F401  (registers the LoMDM auto classes)
from hf_lomdm.cli.common import ArgumentParser, UsageError, from_pretrained, run_cli
from hf_lomdm.model_card import plot_reveal_order

parser = ArgumentParser(description=__doc__)
parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (with its tokenizer)")
parser.add_argument("--prompt", default="", help="text to continue (default: unconditional)")
parser.add_argument("--max-new-tokens", type=int, default=64, help="capped at the model's context")
parser.add_argument("--order", default="learned", help="generation order to plot")
parser.add_argument("--output", default="outputs/reveal_order.png", help="PNG to write (folders are created)")
parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")


def main(argv: list[str]) -> None:
    args = parser.parse_args(argv)

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise UsageError("the plot needs matplotlib: pip install -e '.[plot]'") from error
    tokenizer = from_pretrained(AutoTokenizer, args.model, "--model")
    model = from_pretrained(AutoModelForMaskedLM, args.model, "--model").eval()
    prompt = torch.tensor(
        [[tokenizer.bos_token_id] + tokenizer(args.prompt, add_special_tokens=False).input_ids]
    )
    max_new_tokens = min(args.max_new_tokens, model.config.max_position_embeddings - prompt.shape[1])
    out = model.generate(
        prompt,
        max_new_tokens=max_new_tokens,
        order=args.order,
        return_dict_in_generate=True,
        output_order=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    tokens = [tokenizer.decode([token]) for token in out.sequences[0].tolist()]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    title = f"{Path(args.model).name}, order={args.order}, {out.nfe.item()} passes"
    path = plot_reveal_order(tokens, out.order[0].tolist(), args.output, title=title)
    print(tokenizer.decode(out.sequences[0], skip_special_tokens=True))
    print(f"{out.nfe.item()} passes; reveal order (darker = earlier) saved to {path}")


if __name__ == "__main__":
    run_cli("plot_order.py", main)
