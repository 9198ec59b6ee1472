"""Heat map of the learned reveal order over a generated text (saved as PNG; needs the `plot` extra).
Each cell is one token, coloured by the pass that revealed it: darker = earlier (viridis, purple -> yellow).

    python examples/plot_order.py --model path/to/checkpoint --output reveal_order.png
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

import hf_lomdm  # noqa: F401  (registers the LoMDM auto classes)
from hf_lomdm.model_card import plot_reveal_order

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (with its tokenizer)")
parser.add_argument("--prompt", default="", help="text to continue (default: unconditional)")
parser.add_argument("--max-new-tokens", type=int, default=64, help="capped at the model's context")
parser.add_argument("--order", default="learned")
parser.add_argument("--output", default="reveal_order.png")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForMaskedLM.from_pretrained(args.model).eval()
prompt = torch.tensor([[tokenizer.bos_token_id] + tokenizer(args.prompt, add_special_tokens=False).input_ids])
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
path = plot_reveal_order(tokens, out.order[0].tolist(), args.output)
print(tokenizer.decode(out.sequences[0], skip_special_tokens=True))
print(f"{out.nfe.item()} passes; reveal order (darker = earlier) saved to {path}")
