"""The console scripts, one module each (`[project.scripts]` in pyproject.toml):

- `lomdm-train` (`train`): train a LoMDM from a recipe (`training/configs/`); `python -m hf_lomdm.cli.train` for
  `accelerate launch`.
- `lomdm-eval` (`evaluate`): NELBO bound, context use and per-order samples of a checkpoint.
- `lomdm-convert` (`convert`): a pretrained causal LM turned into a LoMDM checkpoint.
- `common`: what they and `examples/*.py` share: one-line usage errors with exit status 2 (`--debug` for the
  traceback), both flag spellings, negative numbers as values, defaults in `--help`, missing folders named.
"""

__all__: list[str] = []
