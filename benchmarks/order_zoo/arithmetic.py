"""k-digit addition written most-significant digit first: the order that makes each digit easy runs backwards.

Row: a_1..a_k, b_1..b_k (the givens), c_1..c_{k+1} (generated), every number most significant digit first, so
c = a + b with c_1 the final carry. Digit c_i depends on every digit right of it through the carry; revealed
from the right (least significant first), each digit is a local sum of a_i, b_i and the carry that the digit
to its right and its a, b already fix. Reading order, or confidence decoding that fills the locally easy
digits first, has to guess carries. Each of a, b and c has its own token ids. The split is by (a, b).
"""

from __future__ import annotations

import torch

from .infilling import InfillingTask, keep_givens
from .synthetic import FIRST_ID


class Addition(InfillingTask):
    """c = a + b in base `base`, `digits` digits per operand, most significant digit first.

    Args:
        digits: k, the digits of a and of b (c has k + 1).
        base: the digit base.
    """

    def __init__(self, digits: int = 4, base: int = 10):
        if digits < 1 or base < 2:
            raise ValueError(f"`digits` must be >= 1 and `base` >= 2, got {digits} and {base}.")
        self.digits, self.base = digits, base
        self.name = f"add{digits}"
        self.length = 3 * digits + 1
        self.num_blanks = digits + 1
        self.vocab_size = FIRST_ID + 3 * base
        self.groups = torch.cat(
            [torch.zeros(digits), torch.ones(digits), torch.full((digits + 1,), 2)]
        ).long()

    def _sum_digits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Digits `(N, k+1)` of a + b, most significant first, from operand digits `(N, k)` each."""
        k = self.digits
        weights = self.base ** torch.arange(k - 1, -1, -1)  # most significant first
        total = (a * weights).sum(-1) + (b * weights).sum(-1)  # (N,)
        return (total[:, None] // (self.base ** torch.arange(k, -1, -1))) % self.base

    def _draw(self, num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.digits
        operands = torch.randint(0, self.base, (num, 2 * k), generator=generator)
        values = torch.cat([operands, self._sum_digits(operands[:, :k], operands[:, k:])], -1)
        givens = (self.groups < 2).expand(num, -1).clone()
        return values + FIRST_ID + self.groups * self.base, givens

    def key(self, solutions: torch.Tensor, givens: torch.Tensor) -> list[bytes]:
        return [s[: 2 * self.digits].numpy().tobytes() for s in solutions]

    def known_order(self, solutions: torch.Tensor, givens: torch.Tensor) -> torch.Tensor:
        """Least significant digit first: the column index (the rightmost sum digit scores highest)."""
        return torch.arange(self.length, dtype=torch.float).expand(solutions.shape[0], -1)

    def is_solved(self, rows: torch.Tensor, solutions: torch.Tensor, givens: torch.Tensor) -> torch.Tensor:
        k, rows = self.digits, rows.cpu()
        values = rows - FIRST_ID - self.groups * self.base
        in_range = ((values >= 0) & (values < self.base)).all(-1)
        operands = values[:, : 2 * k].clamp(0, self.base - 1)
        right = (self._sum_digits(operands[:, :k], operands[:, k:]) == values[:, 2 * k :]).all(-1)
        return in_range & right & keep_givens(rows, solutions, givens)


__all__ = ["Addition"]
