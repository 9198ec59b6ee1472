"""Sudoku as infilling: 4 × 4 (2 × 2 boxes) with unique solutions, 6 × 6 (2 × 3 boxes) with held-out grids.

A grid is a row of `n * n` digit tokens in reading order (digit d has id `FIRST_ID + d`); the blanks are
generated. A row solves the puzzle when it keeps the givens and every row, column and box holds each digit once.

- `sudoku4`: there are only 288 valid 4 × 4 grids, so every test grid is also a training grid. The split is by
  puzzle: a puzzle is a (grid, givens) pair with exactly one completion (checked against all 288 grids), and no
  training puzzle equals a test puzzle. A model may memorise the grids; it still has to find the one that fits
  the givens.
- `sudoku6`: about 2.8e7 grids. The split is by grid: no training grid equals a test grid. Grids are random
  symmetries (band / row / stack / column permutations and digit relabelling) of a pool of grids found by
  randomised backtracking; puzzles need not have a unique solution (any valid completion counts).
"""

from __future__ import annotations

import itertools
import random

import torch

from .infilling import InfillingTask, keep_givens, random_blanks
from .synthetic import FIRST_ID


def units(box_rows: int, box_cols: int) -> torch.Tensor:
    """`(3n, n)` cell indices of every row, column and box of an n × n grid, n = box_rows * box_cols."""
    n = box_rows * box_cols
    cells = torch.arange(n * n).reshape(n, n)
    boxes = cells.reshape(n // box_rows, box_rows, n // box_cols, box_cols).permute(0, 2, 1, 3).reshape(n, n)
    return torch.cat([cells, cells.T, boxes])


def is_valid_grid(values: torch.Tensor, box_rows: int, box_cols: int) -> torch.Tensor:
    """`(N,)` bool: each row, column and box of the grids `values` `(N, n*n)` (digits 0..n-1) holds every digit."""
    n = box_rows * box_cols
    groups = values[:, units(box_rows, box_cols)]  # (N, 3n, n)
    return (groups.sort(-1).values == torch.arange(n)).all(-1).all(-1)


def _backtrack(n: int, box_rows: int, box_cols: int, rng: random.Random) -> list[int]:
    """One valid grid, cells filled in reading order with the digits tried in a random order."""
    grid = [0] * (n * n)
    unit_of = units(box_rows, box_cols).tolist()
    peers = [set() for _ in range(n * n)]
    for unit in unit_of:
        for cell in unit:
            peers[cell].update(unit)

    def fill(cell: int) -> bool:
        if cell == n * n:
            return True
        for digit in rng.sample(range(1, n + 1), n):
            if all(grid[peer] != digit for peer in peers[cell]):
                grid[cell] = digit
                if fill(cell + 1):
                    return True
        grid[cell] = 0
        return False

    fill(0)
    return [digit - 1 for digit in grid]


class Sudoku(InfillingTask):
    """n × n Sudoku with `box_rows` × `box_cols` boxes and `num_blanks` cells to fill.

    Args:
        box_rows: rows per box (2).
        box_cols: columns per box (2 or 3).
        num_blanks: cells generated per puzzle.
        unique: keep only puzzles with one completion (enumerates every grid: 4 × 4 only).
    """

    def __init__(self, box_rows: int, box_cols: int, num_blanks: int, unique: bool):
        self.box_rows, self.box_cols, self.unique = box_rows, box_cols, unique
        self.n = box_rows * box_cols
        if not 0 < num_blanks < self.n * self.n:
            raise ValueError(f"`num_blanks` must be in 1..{self.n * self.n - 1}, got {num_blanks}.")
        self.name = f"sudoku{self.n}"
        self.length = self.n * self.n
        self.vocab_size = FIRST_ID + self.n
        self.num_blanks = num_blanks
        rng = random.Random(0)
        if unique:
            self.grids = self._all_grids()
        else:
            self.grids = torch.tensor([_backtrack(self.n, box_rows, box_cols, rng) for _ in range(64)])

    def _all_grids(self) -> torch.Tensor:
        """`(G, n*n)` every valid grid, by rows of permutations with pruning (288 for 4 × 4)."""
        n, found = self.n, []
        perms = list(itertools.permutations(range(n)))

        def extend(rows: list[tuple[int, ...]]) -> None:
            if len(rows) == n:
                found.append([d for row in rows for d in row])
                return
            band = len(rows) // self.box_rows * self.box_rows
            for perm in perms:
                if any(perm[c] == row[c] for row in rows for c in range(n)):
                    continue
                if any(
                    perm[c] in {row[cc] for row in rows[band:] for cc in range(c0, c0 + self.box_cols)}
                    for c0 in range(0, n, self.box_cols)
                    for c in range(c0, c0 + self.box_cols)
                ):
                    continue
                extend(rows + [perm])

        extend([])
        return torch.tensor(found)

    def _symmetries(self, grids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each grid `(N, n*n)` under a random validity-preserving symmetry."""
        n, br, bc, num = self.n, self.box_rows, self.box_cols, grids.shape[0]

        def nested(groups: int, size: int) -> torch.Tensor:  # (N, groups*size): permute groups, then inside
            outer = torch.rand(num, groups, generator=generator).argsort(-1)
            inner = torch.rand(num, groups, size, generator=generator).argsort(-1)
            return (outer[:, :, None] * size + inner).reshape(num, -1)

        rows, cols = nested(n // br, br), nested(n // bc, bc)  # (N, n) each
        digits = torch.rand(num, n, generator=generator).argsort(-1)
        cells = (rows[:, :, None] * n + cols[:, None, :]).reshape(num, -1)
        return digits.gather(1, grids.gather(1, cells))

    def _draw(self, num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        solutions, givens, have = [], [], 0
        while have < num:
            pick = torch.randint(0, self.grids.shape[0], (num,), generator=generator)
            grids = self.grids[pick]
            if not self.unique:
                grids = self._symmetries(grids, generator)
            shown = random_blanks(num, self.length, self.num_blanks, generator)
            if self.unique:  # exactly one grid agrees with the givens
                agree = ((self.grids[None] == grids[:, None]) | ~shown[:, None]).all(-1)  # (num, G)
                keep = agree.sum(-1) == 1
                grids, shown = grids[keep], shown[keep]
            solutions.append(grids + FIRST_ID)
            givens.append(shown)
            have += grids.shape[0]
        return torch.cat(solutions)[:num], torch.cat(givens)[:num]

    def key(self, solutions: torch.Tensor, givens: torch.Tensor) -> list[bytes]:
        if self.unique:  # by puzzle
            return [s.numpy().tobytes() + g.numpy().tobytes() for s, g in zip(solutions, givens)]
        return [s.numpy().tobytes() for s in solutions]  # by grid

    def known_order(self, solutions: torch.Tensor, givens: torch.Tensor) -> torch.Tensor:
        """Digits ruled out at each cell by the givens in its row, column and box (a naked single rules out
        n - 1); the givens only, so it is the order a solver would start with."""
        unit_of = units(self.box_rows, self.box_cols)  # (3n, n)
        member = torch.zeros(self.length, unit_of.shape[0], dtype=torch.bool)
        member[unit_of, torch.arange(unit_of.shape[0])[:, None]] = True
        peers = (member.float() @ member.float().T) > 0  # (cells, cells), a cell is its own peer
        shown = (
            torch.nn.functional.one_hot(solutions - FIRST_ID, self.n).float() * givens[..., None]
        )  # (N, c, n)
        seen = torch.einsum("pq,nqd->npd", peers.float(), shown) > 0  # (N, cells, n): digit among given peers
        return seen.sum(-1).float()

    def is_solved(self, rows: torch.Tensor, solutions: torch.Tensor, givens: torch.Tensor) -> torch.Tensor:
        values = rows.cpu() - FIRST_ID
        in_range = ((values >= 0) & (values < self.n)).all(-1)
        valid = is_valid_grid(values.clamp(0, self.n - 1), self.box_rows, self.box_cols)
        return in_range & valid & keep_givens(rows.cpu(), solutions, givens)


def sudoku4(num_blanks: int = 10) -> Sudoku:
    """4 × 4 Sudoku puzzles with a unique solution and `num_blanks` blanks (44% of random 10-blank puzzles are
    unique, 5% of 12-blank ones)."""
    return Sudoku(2, 2, num_blanks, unique=True)


def sudoku6(num_blanks: int = 20) -> Sudoku:
    """6 × 6 Sudoku (2 × 3 boxes) with `num_blanks` blanks; held-out grids."""
    return Sudoku(2, 3, num_blanks, unique=False)


__all__ = ["Sudoku", "is_valid_grid", "sudoku4", "sudoku6", "units"]
