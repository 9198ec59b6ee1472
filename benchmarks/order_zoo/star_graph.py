"""Path-finding on a star graph: easy backwards from the goal, a guess forwards from the start.

A star graph has a centre (the start) and `arms` paths of `arm_length` nodes leaving it; one arm's last node is
the goal. Row: the `arms * arm_length` directed edges (parent, child) in a random order, the start, the goal
(the givens), then the path p_1..p_{arm_length} from the start to the goal, p_{arm_length} = goal (generated).
Node names are drawn without replacement from `nodes` symbols, so a model cannot know the graph by heart.

Forwards, p_1 is one of `arms` children of the start and only the whole arm tells which; backwards, each node is
the parent of the one after it, one edge lookup (Bachmann & Nagarajan's "pitfalls of next-token prediction"
task, in the masked-diffusion form of arXiv 2602.19980). A path solves the puzzle when it starts at a child
of the start, follows edges and ends at the goal. Edge tokens, start / goal and path tokens share node ids.
"""

from __future__ import annotations

import torch

from .infilling import InfillingTask, keep_givens
from .synthetic import FIRST_ID


class StarGraph(InfillingTask):
    """Star graphs with `arms` arms of `arm_length` nodes, node names from `nodes` symbols.

    Args:
        arms: children of the start.
        arm_length: nodes per arm (the path's length).
        nodes: node names to draw from (at least `arms * arm_length + 1`).
    """

    def __init__(self, arms: int = 3, arm_length: int = 4, nodes: int = 24):
        if arms < 2 or arm_length < 2 or nodes < arms * arm_length + 1:
            raise ValueError(
                f"need arms >= 2, arm_length >= 2 and nodes >= arms * arm_length + 1, got {arms}, "
                f"{arm_length} and {nodes}."
            )
        self.arms, self.arm_length, self.nodes = arms, arm_length, nodes
        self.name = f"star{arms}x{arm_length}"
        self.num_edges = arms * arm_length
        self.length = 2 * self.num_edges + 2 + arm_length
        self.num_blanks = arm_length
        self.vocab_size = FIRST_ID + nodes

    def _draw(self, num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        a, m = self.arms, self.arm_length
        names = torch.rand(num, self.nodes, generator=generator).argsort(-1)[:, : a * m + 1]  # (N, a*m+1)
        start, arm_nodes = names[:, :1], names[:, 1:].reshape(num, a, m)  # arm j: node 0 is the start's child
        parents = torch.cat([start[:, :, None].expand(num, a, 1), arm_nodes[:, :, :-1]], -1)  # (N, a, m)
        edges = torch.stack([parents, arm_nodes], -1).reshape(num, a * m, 2)
        shuffle = torch.rand(num, a * m, generator=generator).argsort(-1)
        edges = edges.gather(1, shuffle[:, :, None].expand(-1, -1, 2)).reshape(num, -1)
        goal_arm = torch.randint(0, a, (num,), generator=generator)
        path = arm_nodes[torch.arange(num), goal_arm]  # (N, m)
        rows = torch.cat([edges, start, path[:, -1:], path], -1) + FIRST_ID
        givens = torch.ones_like(rows, dtype=torch.bool)
        givens[:, -m:] = False
        return rows, givens

    def key(self, solutions: torch.Tensor, givens: torch.Tensor) -> list[bytes]:
        return [s[: -self.arm_length].numpy().tobytes() for s in solutions]

    def known_order(self, solutions: torch.Tensor, givens: torch.Tensor) -> torch.Tensor:
        """Backwards from the goal: the column index (the path's last node scores highest)."""
        return torch.arange(self.length, dtype=torch.float).expand(solutions.shape[0], -1)

    def is_solved(self, rows: torch.Tensor, solutions: torch.Tensor, givens: torch.Tensor) -> torch.Tensor:
        rows, e, m = rows.cpu(), self.num_edges, self.arm_length
        edges = rows[:, : 2 * e].reshape(-1, e, 2)  # (N, E, 2)
        start, goal, path = rows[:, 2 * e], rows[:, 2 * e + 1], rows[:, -m:]
        hops = torch.stack([torch.cat([start[:, None], path[:, :-1]], -1), path], -1)  # (N, m, 2)
        is_edge = (hops[:, :, None, :] == edges[:, None, :, :]).all(-1).any(-1).all(-1)  # every hop an edge
        return is_edge & (path[:, -1] == goal) & keep_givens(rows, solutions, givens)


__all__ = ["StarGraph"]
