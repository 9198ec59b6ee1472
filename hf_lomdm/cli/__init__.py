"""The console scripts, one module each (`[project.scripts]` in pyproject.toml):

- `lomdm-train` (`train`): train a LoMDM from a recipe (`training/configs/`); `python -m hf_lomdm.cli.train` for
  `accelerate launch`.
- `lomdm-eval` (`evaluate`): NELBO bound, context use and per-order samples of a checkpoint.
- `lomdm-convert` (`convert`): a pretrained causal LM turned into a LoMDM checkpoint.
"""

__all__: list[str] = []
