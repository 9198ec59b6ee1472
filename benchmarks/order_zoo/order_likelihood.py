"""How much the generation order changes the denoiser's likelihood of the right answer: the signal a scheduler gets.

For a time-independent denoiser and a state-independent schedule, the NELBO is an expectation over reveal orders π
of -log Π_k p_θ(x_π(k) | the givens and x_π(1..k-1)). With an exact denoiser every order gives -log p(x | givens)
(the chain rule), which is 0 on the zoo's puzzles with one solution (`sudoku4`, `add4`): what an order changes is
the denoiser's error only, and the gradient the scheduler gets from the NELBO is the difference of that error
between orders. `order_nll` measures it on held-out solutions, teacher-forced: one blank revealed per pass, always
with its true token, in the order of

- `solver`: the task's `known_order`, re-read on the cells revealed so far (Sudoku: the cell whose revealed peers
  rule out the most digits, i.e. a naked single first, as constraint propagation finds them; addition: least
  significant digit first);
- `random`: a uniformly random order;
- `confidence`: the blank whose most likely token is most probable (what confidence decoding would follow were
  its tokens right);
- `learned`: the highest reverse exponent ê, re-read on the current canvas (`learned_ranked`, τ = 0);
- `learned_pl`: a Plackett-Luce draw with weights ê (`learned_ranked`, τ = 1), the orders the NELBO averages
  over under the learned schedule;
- `oracle`: the blank whose true token is most probable (reads the answer: a bound for greedy orders, not a
  sampler).

Ties are broken uniformly at random in every order.
"""

from __future__ import annotations

import math

import torch

from .infilling import InfillingTask
from .synthetic import MASK_ID

ORDERS = ("solver", "random", "confidence", "learned", "learned_pl", "oracle")


def order_nll(
    model,
    task: InfillingTask,
    solutions: torch.Tensor,
    givens: torch.Tensor,
    order: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced NLL of each solution's blanks, revealed one per pass in the order `order` (see module doc).

    Args:
        model: A `LoMDMForMaskedDiffusion` that is not time-conditioned.
        task: The puzzles' task; `solutions` and `givens` `(N, length)` as `task.test_puzzles` returns them.
        order: One of `ORDERS`.
        generator: Draws the tie-breaking (and the random / Plackett-Luce orders).

    Returns:
        `(N,)` float64 NLL in nats per puzzle, and `(N, length)` the pass at which each blank was revealed (-1 at
        the givens).

    Raises:
        ValueError: for an unknown `order` or a time-conditioned model.
    """
    if order not in ORDERS:
        raise ValueError(f"`order` must be one of {ORDERS}, got {order!r}.")
    if model.is_time_conditioned:
        raise ValueError("`order_nll` needs a time-independent denoiser (`time_conditioning=False`).")
    canvas = task.canvas(solutions, givens)  # (N, 1 + length)
    noise_mask = canvas == MASK_ID  # the set M, fixed for the whole pass sequence (as `generate` passes it)
    rows = torch.arange(canvas.shape[0])
    nll = torch.zeros(canvas.shape[0], dtype=torch.float64)
    revealed_at = torch.full(solutions.shape, -1, dtype=torch.long)
    with torch.no_grad():
        for step in range(int(noise_mask.sum(-1).max())):
            masked = canvas[:, 1:] == MASK_ID  # (N, length)
            out = model(canvas, noise_mask=noise_mask, output_exponents=True)
            log_probs = out.logits[:, 1:].double()  # (N, length, V)
            true_log_prob = log_probs.gather(-1, solutions[..., None]).squeeze(-1)  # (N, length)
            uniform = 1.0 - torch.rand(solutions.shape, generator=generator, dtype=torch.float64)
            score = _score(
                order, task, solutions, ~masked, log_probs, true_log_prob, out.reverse_exponents, uniform
            )
            # Highest score first; ties go to a uniformly random blank (argmax of the score along a random order).
            shuffle = torch.rand(solutions.shape, generator=generator).argsort(-1)
            score = score.double().masked_fill(~masked, -math.inf).gather(-1, shuffle)
            pick = shuffle.gather(-1, score.argmax(-1, keepdim=True)).squeeze(-1)  # (N,)
            live = masked[rows, pick]  # rows with a blank left
            nll -= torch.where(live, true_log_prob[rows, pick], 0.0)
            canvas[rows[live], 1 + pick[live]] = solutions[rows[live], pick[live]]
            revealed_at[rows[live], pick[live]] = step
    return nll, revealed_at


def _score(
    order: str,
    task: InfillingTask,
    solutions: torch.Tensor,
    known: torch.Tensor,
    log_probs: torch.Tensor,
    true_log_prob: torch.Tensor,
    reverse_exponents: torch.Tensor,
    uniform: torch.Tensor,
) -> torch.Tensor:
    """`(N, length)` how early each blank is revealed next under `order` (higher first)."""
    if order == "solver":
        return task.known_order(solutions, known)
    if order == "random":
        return torch.zeros_like(uniform)
    if order == "confidence":
        return log_probs.max(-1).values
    if order == "learned":
        return reverse_exponents[:, 1:].double()
    if order == "learned_pl":  # Gumbel top-1 with weights ê: P(i next) = ê_i / Σ_j ê_j
        return reverse_exponents[:, 1:].double().log() - torch.log(-torch.log(uniform))
    return true_log_prob  # oracle


def order_likelihoods(
    model, task: InfillingTask, solutions: torch.Tensor, givens: torch.Tensor, seed: int
) -> dict[str, dict[str, float]]:
    """Per order of `ORDERS`: mean NLL per puzzle ± s.e. over the puzzles, and its paired gap to `random`
    (order minus random, ± s.e. of the per-puzzle differences; negative: the order makes the answer likelier)."""
    nll = {
        order: order_nll(model, task, solutions, givens, order, torch.Generator().manual_seed(seed))[0]
        for order in ORDERS
    }
    n = solutions.shape[0]
    result = {}
    for order, values in nll.items():
        gap = values - nll["random"]
        result[order] = {
            "nll": float(values.mean()),
            "se": float(values.std() / math.sqrt(n)),
            "gap_to_random": float(gap.mean()),
            "gap_se": float(gap.std() / math.sqrt(n)),
        }
    return result


__all__ = ["ORDERS", "order_likelihoods", "order_nll"]
