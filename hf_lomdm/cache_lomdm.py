"""The block KV cache of LoMDM generation (`cache_implementation="prefix"` / `"dual"` with `block_length`).

Hub-facing: this file ships inside checkpoints (trust_remote_code), so it imports only torch, transformers and
its `*_lomdm.py` siblings, through single-dot imports (`from .x import y`): transformers copies exactly those
into a saved folder.

Shapes: B = batch, L = canvas length, W = columns a cached pass recomputes (its window), H = hidden size,
D = head dim.

Semi-autoregressive generation fills one block of new tokens at a time, left to right. The first pass of a block
runs on the whole canvas, as without a cache, and [`LoMDMBlockCache`] keeps, for every layer, the keys and
values of the columns outside the block's window:

- `prefix`: the window is the block and everything after it (the masked suffix); the prompt and the finished
  blocks are cached. Every later pass of the block recomputes W = L - start columns.
- `dual`: the window is the block only; the prompt, the finished blocks and the masked suffix are cached
  (Fast-dLLM's DualCache, arXiv 2505.22618). W = `block_length`.

With a shifted head (`config.shift`, position i predicted from the features at i - 1) the window also takes the
column just before the block. A cached pass is exact when the cached keys / values are those a fresh pass would
compute, e.g. with one layer (layer-0 keys depend on a column's own token only); with several layers it is an
approximation: in a fresh pass the cached columns would attend to the tokens revealed since the block began.

What the reverse scheduler ê (`schedule="lomdm"`) sees in a cached pass: its layer reads the backbone features
f(z) of the whole canvas (as in training): fresh features in the window and, outside it, the features of the
block's first pass (the cache keeps them with the keys / values). NormSig is taken over the whole set M, as
without a cache. The other schedules' ê do not read features and are exact.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

# The values of `LoMDMGenerationConfig.cache_implementation`.
CACHE_IMPLEMENTATIONS = ("prefix", "dual")


def cache_window(implementation: str, block: tuple[int, int], length: int, shift: bool) -> tuple[int, int]:
    """The columns `[start, end)` the cached passes of `block` `[start, end)` recompute (see the module docstring)."""
    start, end = block
    start = max(start - int(shift), 0)  # a shifted head reads position i from the features at i - 1
    return (start, length) if implementation == "prefix" else (start, end)


class LoMDMBlockCache(DynamicCache):
    """Keys / values of the columns outside a block's window, for every layer, and the features f(z) of the block's
    first pass: what the later passes of the block reuse.

    The first pass (`is_filled` false) runs on the whole canvas: `update` keeps the keys / values outside the
    window and returns the fresh ones unchanged. A cached pass (after `select`) runs on the window only: `update`
    returns the cached keys / values with the window's fresh ones in their place (so the keys keep the canvas's
    column order, and a `(R, L)` padding mask covers them) and stores nothing, so every pass of the block sees the
    same cached columns.

    Args:
        window (`tuple[int, int]`): The columns `[start, end)` a cached pass recomputes (`cache_window`).
        rows (`torch.LongTensor` of shape `(R0,)`): The canvas rows of the first pass, sorted; later passes run on
            some of them.
    """

    def __init__(self, window: tuple[int, int], rows: torch.LongTensor):
        super().__init__()
        self.window = window
        self.rows = rows
        self.features: torch.Tensor | None = None  # (R0, L, H) f(z) of the first pass
        self._selected: torch.LongTensor | None = None  # (R,) indices into `rows` of the current cached pass

    @property
    def is_filled(self) -> bool:
        """Whether the first pass has run (and stored its features)."""
        return self.features is not None

    def select(self, rows: torch.LongTensor) -> None:
        """The next pass is a cached pass on the canvas rows `rows` `(R,)`, a sorted subset of `self.rows`."""
        index = torch.searchsorted(self.rows, rows)
        assert bool((self.rows[index.clamp(max=len(self.rows) - 1)] == rows).all()), (
            "rows outside the first pass"
        )
        self._selected = index

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys / values `(R, kv_heads, L, D)` to attend to, from those of the columns computed now."""
        start, end = self.window
        if self._selected is None:  # the first pass, on the whole canvas: keep the columns outside the window
            outside_keys = torch.cat([key_states[..., :start, :], key_states[..., end:, :]], dim=-2)
            outside_values = torch.cat([value_states[..., :start, :], value_states[..., end:, :]], dim=-2)
            super().update(outside_keys, outside_values, layer_idx)
            return key_states, value_states
        layer = self.layers[layer_idx]
        keys, values = layer.keys[self._selected], layer.values[self._selected]  # (R, kv_heads, L - W, D)
        keys = torch.cat([keys[..., :start, :], key_states, keys[..., start:, :]], dim=-2)
        values = torch.cat([values[..., :start, :], value_states, values[..., start:, :]], dim=-2)
        return keys, values

    def features_with(self, window_features: torch.Tensor) -> torch.Tensor:
        """`(R, L, H)` f(z) of the selected rows: the first pass's features with the window's fresh ones
        `(R, W, H)` in place (what the reverse scheduler reads)."""
        start, end = self.window
        features = self.features[self._selected].clone()
        features[:, start:end] = window_features
        return features


__all__ = ["CACHE_IMPLEMENTATIONS", "LoMDMBlockCache", "cache_window"]
