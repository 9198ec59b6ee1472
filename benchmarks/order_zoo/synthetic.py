"""Synthetic sequence tasks whose best generation order is known: does a learned order learn, and does it help?

Each task draws rows of token ids in which some positions are *causes* (free, uniformly random) and the others
*effects* (a deterministic function of the causes). Generating causes first makes every effect a lookup; revealing
an effect before its causes forces a guess that the causes must then agree with. So a learned schedule should give
causes the larger exponents (revealed earlier: a token's reveal time is `u**(1/e)`), and sampling in the learned
order should produce more valid rows than a random order at the same small number of steps.

| task | row | causes | effects | validity |
|---|---|---|---|---|
| `max` | x_1..x_n, y_1..y_n | x (uniform over k symbols) | y_i = max(x_i, x_{i+1 mod n}) | every y_i right |
| `sort` | x_1..x_n, s_1..s_n | x | s = sorted(x) | s is x sorted |
| `add` | a_1..a_n, b_1..b_n, c_1..c_{n+1} | digits of a, b (least significant first) | digits of c = a + b | c right |

Every kind of token has its own ids (`x` symbol j and `y` symbol j differ), so the model knows a position's role
from its token as well as from its position. Id 0 is the mask token; ids 1-3 are pad / bos / eos (never used in
the rows, kept so that the vocabulary layout matches the text models').
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK_ID, PAD_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
FIRST_ID = 4


@dataclass(frozen=True)
class OrderTask:
    """A task: `sample(n, generator)` valid rows, `is_valid(rows)` per row, and which positions are causes.

    Args:
        name: `max`, `sort` or `add`.
        size: causes per group (`add` has two groups, a and b; its sum has `size + 1` digits).
        symbols: values per token (the digit base of `add`).
    """

    name: str
    size: int
    symbols: int

    @property
    def groups(self) -> torch.Tensor:
        """`(length,)` group of each position: 0 = x (or a), 1 = y / s (or b), 2 = c; each group has its own ids."""
        n = self.size
        sizes = (n, n, n + 1) if self.name == "add" else (n, n)
        return torch.cat([torch.full((size,), group) for group, size in enumerate(sizes)])

    @property
    def length(self) -> int:
        return self.groups.numel()

    @property
    def vocab_size(self) -> int:
        return FIRST_ID + (int(self.groups.max()) + 1) * self.symbols

    @property
    def cause_mask(self) -> torch.Tensor:
        """`(length,)` bool: True at the positions that should be generated first."""
        return self.groups < (2 if self.name == "add" else 1)

    def _effects(self, causes: torch.Tensor) -> torch.Tensor:
        """Effect values `(N, ·)` from cause values `(N, ·)` (symbols 0..k-1)."""
        n = self.size
        if self.name == "max":
            return torch.maximum(causes, causes.roll(-1, dims=-1))
        if self.name == "sort":
            return causes.sort(dim=-1).values
        weights = self.symbols ** torch.arange(n + 1)
        total = (causes[:, :n] * weights[:n]).sum(-1) + (causes[:, n:] * weights[:n]).sum(-1)  # (N,)
        return (total[:, None] // weights) % self.symbols  # digits of a + b, least significant first

    def sample(self, num_rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`(num_rows, length)` valid rows of token ids."""
        causes = torch.randint(0, self.symbols, (num_rows, int(self.cause_mask.sum())), generator=generator)
        values = torch.cat([causes, self._effects(causes)], dim=-1)
        return values + FIRST_ID + self.groups * self.symbols

    def training_rows(
        self, num_rows: int, generator: torch.Generator | None = None
    ) -> dict[str, list[list[int]]]:
        """`{"input_ids", "labels"}` for `LoMDMTrainer`: `<bos>` + a valid row, the `<bos>` never noised.

        The `<bos>` anchor matters: the backbone has rotary (relative) positions only, so on a fully masked row
        every position looks the same to it and to the reverse scheduler; counted from `<bos>`, they differ.
        """
        rows = self.sample(num_rows, generator)
        bos = torch.full((num_rows, 1), BOS_ID)
        return {
            "input_ids": torch.cat([bos, rows], -1).tolist(),
            "labels": torch.cat([torch.full_like(bos, -100), rows], -1).tolist(),
        }

    def generate(self, model, num_rows: int, generator: torch.Generator | None = None, **generate_kwargs):
        """`(num_rows, length)` rows sampled by `model.generate` after a `<bos>` prompt (the prompt is dropped)."""
        prompt = torch.full((num_rows, 1), BOS_ID, dtype=torch.long, device=model.device)
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=self.length, generator=generator, **generate_kwargs)
        return out[:, 1:]

    def exponents(self, model, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward exponents e of clean rows and reverse exponents ê of the fully masked canvas (what the sampler
        sees at its first step), both `(N, length)`, with the `<bos>` anchor in front."""
        bos = torch.full((rows.shape[0], 1), BOS_ID, dtype=torch.long, device=rows.device)
        noise_mask = torch.ones(rows.shape[0], self.length + 1, dtype=torch.bool, device=rows.device)
        noise_mask[:, 0] = False
        with torch.no_grad():
            e = model.forward_exponents(torch.cat([bos, rows], -1), noise_mask=noise_mask)
            canvas = torch.cat([bos, torch.full_like(rows, MASK_ID)], -1)
            e_hat = model(canvas, noise_mask=noise_mask).reverse_exponents
        return e[:, 1:], e_hat[:, 1:]

    def is_valid(self, rows: torch.Tensor) -> torch.Tensor:
        """`(N,)` bool: every token is in its group's id range and the effects follow from the causes."""
        values = rows.cpu() - FIRST_ID - self.groups * self.symbols
        in_range = ((values >= 0) & (values < self.symbols)).all(-1)
        causes = values[:, self.cause_mask].clamp(0, self.symbols - 1)
        return in_range & (self._effects(causes) == values[:, ~self.cause_mask]).all(-1)


def order_task(name: str, size: int = 8, symbols: int = 8) -> OrderTask:
    """The built-in task `name` (`max`, `sort`, `add`) with `size` causes per group over `symbols` values.

    Raises:
        ValueError: for an unknown name or sizes below 2.
    """
    if name not in TASKS:
        raise ValueError(f"unknown order task {name!r}; choose from {TASKS}.")
    if size < 2 or symbols < 2:
        raise ValueError(f"`size` and `symbols` must be >= 2, got {size} and {symbols}.")
    return OrderTask(name, size, symbols)


def exponent_contrast(exponents: torch.Tensor, cause_mask: torch.Tensor) -> float:
    """Mean exponent of the cause positions minus that of the effect positions (> 0: causes revealed first)."""
    exponents = exponents.reshape(-1, cause_mask.numel()).double()
    return float(exponents[:, cause_mask].mean() - exponents[:, ~cause_mask].mean())


TASKS = ("max", "sort", "add")

__all__ = ["BOS_ID", "FIRST_ID", "MASK_ID", "TASKS", "OrderTask", "exponent_contrast", "order_task"]
