"""Share a checkpoint: push model, tokenizer, generation config and model card, then load it back from the Hub.

    python examples/push_to_hub.py --model path/to/checkpoint --repo your-name/lomdm-shakespeare-tiny
The pushed repo also carries the model code, so it loads with `trust_remote_code=True` where hf_lomdm is not
installed. Set HF_ENDPOINT to push to another Hub-compatible server.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from huggingface_hub import HfApi
from transformers import AutoModelForMaskedLM, AutoTokenizer

import hf_lomdm  # noqa: F401  (registers the LoMDM auto classes; the saved auto_map enables remote code)
from hf_lomdm.cli.common import ArgumentParser, UsageError, check_local_folder, from_pretrained, run_cli

parser = ArgumentParser(description=__doc__)
parser.add_argument("--model", required=True, help="local checkpoint folder (from lomdm-train)")
parser.add_argument("--repo", required=True, help="Hub repo id, e.g. your-name/lomdm-tiny")
parser.add_argument("--private", action="store_true", help="create the repo as private")


def main(argv: list[str]) -> None:
    args = parser.parse_args(argv)

    if not os.path.isdir(check_local_folder(args.model, "--model")):
        raise UsageError(f"--model {args.model!r}: no such folder.")
    model = from_pretrained(AutoModelForMaskedLM, args.model, "--model")
    tokenizer = from_pretrained(AutoTokenizer, args.model, "--model")

    # 1. Push: weights (safetensors), config + model code, generation config, tokenizer, and the README model card.
    model.push_to_hub(args.repo, private=args.private)
    tokenizer.push_to_hub(args.repo, private=args.private)
    readme = Path(args.model) / "README.md"
    if readme.is_file():
        HfApi().upload_file(path_or_fileobj=str(readme), path_in_repo="README.md", repo_id=args.repo)
    else:
        print(f"no model card at {readme}; lomdm-train writes one")

    # 2. Load it back from the Hub and generate.
    loaded = AutoModelForMaskedLM.from_pretrained(args.repo).eval()
    prompt = torch.tensor([[tokenizer.bos_token_id]])
    sample = loaded.generate(prompt, max_new_tokens=24, generator=torch.Generator().manual_seed(0))
    print(
        f"pushed {args.repo}; a sample from the Hub copy:",
        tokenizer.decode(sample[0], skip_special_tokens=True),
    )


if __name__ == "__main__":
    run_cli("push_to_hub.py", main)
