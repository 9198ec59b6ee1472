"""Generate with LoMDM: prompt completion, infilling, and the order in which the model chose to reveal tokens.

python examples/generate.py                             # tiny random byte model: API demo, noise text
python examples/generate.py --model path/to/checkpoint  # a trained checkpoint and its tokenizer
"""

from __future__ import annotations

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.cli.common import ArgumentParser, from_pretrained, run_cli

MASKED = "_"  # how a still-masked token is printed

parser = ArgumentParser(description=__doc__)
parser.add_argument(
    "--model", default=None, help="checkpoint folder or Hub id (default: a tiny random model)"
)
parser.add_argument("--prompt", default="To be, or not to be", help="text to complete")
parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")


def decode_with_masks(tokenizer, ids: list[int]) -> str:
    """`ids` decoded without BOS and padding, each mask token printed as one `MASKED` character."""
    hidden = (tokenizer.bos_token_id, tokenizer.pad_token_id)
    pieces, run = [], []
    for token in ids + [tokenizer.mask_token_id]:  # the sentinel mask flushes the last run
        if token == tokenizer.mask_token_id:
            pieces += [tokenizer.decode(run), MASKED]
            run = []
        elif token not in hidden:
            run.append(token)
    return "".join(pieces[:-1])


def main(argv: list[str]) -> None:
    args = parser.parse_args(argv)

    if args.model is not None:
        tokenizer = from_pretrained(AutoTokenizer, args.model, "--model")
        model = from_pretrained(AutoModelForMaskedLM, args.model, "--model").eval()
        bos = tokenizer.bos_token_id
        encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids
        decode = lambda ids: decode_with_masks(tokenizer, ids)  # a masked token prints as one "_"
    else:  # bytes as tokens: ids 0-2 are mask / pad / bos, byte b is id b + 4
        model = LoMDMForMaskedDiffusion(
            LoMDMConfig(
                vocab_size=260,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=128,
                mask_token_id=0,
                pad_token_id=1,
                bos_token_id=2,
            )
        ).eval()  # no EOS: noise never ends
        bos = model.config.bos_token_id
        encode = lambda text: [b + 4 for b in text.encode()]
        decode = lambda ids: "".join(MASKED if i == 0 else chr(i - 4) if i >= 4 else "" for i in ids)
    mask = model.config.mask_token_id
    generator = torch.Generator().manual_seed(args.seed)

    # 1. Prompt completion: 48 masks are appended and revealed in the order the model's reverse schedule picks
    #    (steps=None: the exact first-hitting sampler, one token per pass). Prompts start with BOS, as in training.
    prompt = torch.tensor([[bos] + encode(args.prompt)])
    out = model.generate(
        prompt,
        max_new_tokens=48,
        order="learned",
        return_dict_in_generate=True,
        output_order=True,
        output_history=True,
        generator=generator,
    )
    print("completion:", decode(out.sequences[0].tolist()))
    print("passes:", out.nfe.item())

    # 2. The learned reveal order: the canvas after every 8th pass ("_" = still masked).
    for canvas in out.history[::8]:
        print("   ", decode(canvas[0, prompt.shape[1] :].tolist()))

    # 3. Infilling: mask tokens inside the input are filled, every other token is kept; max_new_tokens=0 appends
    #    nothing (a checkpoint's generation_config may set a default length).
    text = [bos] + encode("To be, or ") + [mask] * 8 + encode(" to be: that is the question")
    filled = model.generate(
        torch.tensor([text]), max_new_tokens=0, steps=8, order="confidence", generator=generator
    )
    print("infilled:", decode(filled[0].tolist()))

    # 4. Semi-autoregressive blocks with threshold (parallel) decoding, batched with left padding.
    prompts = [[bos] + encode("Hamlet:"), [bos] + encode("Enter the ghost")]
    width = max(map(len, prompts))
    pad = model.config.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=32,
        block_length=16,
        order="confidence",
        threshold=0.9,
        return_dict_in_generate=True,
        generator=generator,
    )
    for row, nfe in zip(out.sequences.tolist(), out.nfe.tolist()):
        print(f"batched ({nfe} passes):", decode(row))


if __name__ == "__main__":
    run_cli("generate.py", main)
