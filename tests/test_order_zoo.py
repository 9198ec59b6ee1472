"""The order zoo's puzzles: exact validity checks that fail on planted wrong solutions, a held-out split, and an
order that decides how many held-out 4 × 4 Sudoku puzzles a small model solves."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from helpers import task_model, training_arguments

from benchmarks.order_zoo import ZOO, Addition, StarGraph, sudoku4, zoo_task
from benchmarks.order_zoo.infilling import TEST_SIZE
from benchmarks.order_zoo.order_likelihood import ORDERS, order_nll
from benchmarks.order_zoo.sudoku import is_valid_grid
from benchmarks.order_zoo.synthetic import BOS_ID, FIRST_ID, MASK_ID
from hf_lomdm import LoMDMForMaskedDiffusion
from hf_lomdm.data import DataCollatorForMaskedDiffusion
from hf_lomdm.trainer import LoMDMTrainer


@pytest.fixture(scope="module", params=list(ZOO))
def puzzles(request):
    task = zoo_task(request.param)
    return task, *task.test_puzzles(128)


def _another_value(rows: torch.Tensor, columns: torch.Tensor, task) -> torch.Tensor:
    """`rows` with cell `columns[i]` of row i set to the next token of the same kind (a digit of the same number,
    a node), cyclically: in range, but another value."""
    low, size = FIRST_ID, task.vocab_size - FIRST_ID  # Sudoku digits, star-graph nodes
    if isinstance(task, Addition):  # the blanks are digits of the sum, which has its own ids
        low, size = FIRST_ID + 2 * task.base, task.base
    broken, index = rows.clone(), torch.arange(rows.shape[0])
    broken[index, columns] = low + (rows[index, columns] - low + 1) % size
    return broken


def test_a_puzzle_is_solved_by_its_solution_and_has_the_stated_blanks(puzzles):
    task, solutions, givens = puzzles
    assert solutions.shape == givens.shape == (128, task.length) and int(solutions.max()) < task.vocab_size
    assert (~givens).sum(-1).eq(task.num_blanks).all()
    assert task.is_solved(solutions, solutions, givens).all()
    canvas = task.canvas(solutions, givens)
    assert (canvas[:, 0] == BOS_ID).all() and ((canvas[:, 1:] == MASK_ID) == ~givens).all()


def test_a_wrong_value_in_a_blank_is_not_a_solution(puzzles):
    task, solutions, givens = puzzles
    first_blank = (~givens).long().argmax(-1)  # (N,)
    last_blank = task.length - 1 - (~givens).long().flip(-1).argmax(-1)
    for column in (first_blank, last_blank):
        assert not task.is_solved(_another_value(solutions, column, task), solutions, givens).any()


def test_a_changed_given_is_not_a_solution_even_when_the_rules_hold(puzzles):
    task, solutions, givens = puzzles
    # Another puzzle's full solution satisfies the rules but not these givens.
    other = solutions.roll(1, dims=0)
    differs = ((other != solutions) & givens).any(-1)
    assert differs.any() and not task.is_solved(other, solutions, givens)[differs].any()


def test_no_training_puzzle_is_a_test_puzzle(puzzles):
    task = puzzles[0]
    train = task.train_puzzles(4096, torch.Generator().manual_seed(0))
    assert train[0].shape == (4096, task.length)
    assert task.is_solved(train[0], *train).all()
    assert not set(task.key(*train)) & set(task.key(*task.test_puzzles()))


def test_test_puzzles_are_a_fixed_prefix():
    task = sudoku4()
    few, many = task.test_puzzles(16), task.test_puzzles()
    assert (
        many[0].shape[0] == TEST_SIZE
        and torch.equal(few[0], many[0][:16])
        and torch.equal(few[1], many[1][:16])
    )
    with pytest.raises(ValueError, match="`num` must be in 1..1024, got 2000"):
        task.test_puzzles(2000)


def test_sudoku4_has_288_grids_and_its_puzzles_one_completion_each():
    task = sudoku4()
    assert task.grids.shape == (288, 16) and is_valid_grid(task.grids, 2, 2).all()
    assert task.grids.unique(dim=0).shape[0] == 288
    solutions, givens = task.test_puzzles()
    agree = ((task.grids[None] + FIRST_ID == solutions[:, None]) | ~givens[:, None]).all(-1)  # (N, 288)
    assert agree.sum(-1).eq(1).all()


def test_a_sudoku_with_a_repeated_digit_in_a_box_only_is_invalid():
    # Rows and columns are permutations, but the top-left box holds 0, 1, 1, 0.
    grid = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]]).reshape(1, 16)
    assert not is_valid_grid(grid, 2, 2).any()
    assert is_valid_grid(
        torch.tensor([[0, 1, 2, 3], [2, 3, 0, 1], [1, 0, 3, 2], [3, 2, 1, 0]]).reshape(1, 16), 2, 2
    )


def test_sudoku6_grids_are_valid_with_2x3_boxes():
    task = zoo_task("sudoku6")
    solutions, _ = task.test_puzzles(256)
    assert is_valid_grid(solutions - FIRST_ID, 2, 3).all()
    assert solutions.unique(dim=0).shape[0] > 250  # random symmetries: almost never the same grid twice


def test_addition_is_written_most_significant_digit_first():
    task = Addition(digits=3, base=10)
    # 478 + 655 = 1133
    values = torch.tensor([[4, 7, 8, 6, 5, 5, 1, 1, 3, 3]])
    row = values + FIRST_ID + task.groups * 10
    givens = torch.tensor([[True] * 6 + [False] * 4])
    assert task.is_solved(row, row, givens).all()
    wrong = row.clone()
    wrong[0, -1] += 1  # 1134
    assert not task.is_solved(wrong, row, givens).any()
    with pytest.raises(ValueError, match="`digits` must be >= 1"):
        Addition(digits=0)


def test_a_star_graph_path_must_follow_the_edges_to_the_goal():
    task = StarGraph(arms=2, arm_length=2, nodes=5)
    # start 0; arms 0 -> 1 -> 2 and 0 -> 3 -> 4; goal 4: path 3, 4.
    edges = [0, 1, 1, 2, 0, 3, 3, 4]
    row = torch.tensor([edges + [0, 4, 3, 4]]) + FIRST_ID
    givens = torch.tensor([[True] * 10 + [False] * 2])
    assert task.is_solved(row, row, givens).all()
    for path in ([1, 4], [1, 2], [3, 3], [4, 4]):  # wrong arm, wrong goal, no such edges
        wrong = torch.tensor([edges + [0, 4] + path]) + FIRST_ID
        assert not task.is_solved(wrong, row, givens).any(), path
    with pytest.raises(ValueError, match="nodes >= arms"):
        StarGraph(arms=3, arm_length=3, nodes=9)


def test_unknown_zoo_task_is_rejected():
    with pytest.raises(ValueError, match="unknown zoo task 'sudoku9'"):
        zoo_task("sudoku9")


def _untrained(task, seed: int = 0) -> LoMDMForMaskedDiffusion:
    """A 1 × 32 `lomdm` model with a random reverse scheduler head (ê differs between cells and states)."""
    torch.manual_seed(seed)
    model = task_model(task, "lomdm", scheduler_intermediate_size=32, scheduler_head_size=16).eval()
    with torch.no_grad():
        model.reverse_scheduler.score_proj.weight.normal_(0.0, 2.0)
    return model


@pytest.mark.parametrize("name", ["sudoku4", "add4"])
def test_every_order_reveals_each_blank_once_and_its_nll_is_the_sum_of_its_passes(name):
    task = zoo_task(name)
    model = _untrained(task)
    solutions, givens = task.test_puzzles(16)
    for order in ORDERS:
        nll, revealed_at = order_nll(model, task, solutions, givens, order, torch.Generator().manual_seed(0))
        assert (revealed_at[givens] == -1).all(), order
        steps = revealed_at.masked_fill(givens, task.length).sort(-1).values[:, : task.num_blanks]
        assert torch.equal(steps, torch.arange(task.num_blanks).expand_as(steps)), order
        # Replay the recorded order: pass k sees the blanks revealed before k, with their true tokens.
        replayed = torch.zeros(solutions.shape[0], dtype=torch.float64)
        for k in range(task.num_blanks):
            shown = givens | ((revealed_at < k) & (revealed_at >= 0))
            canvas = task.canvas(solutions, shown)
            with torch.no_grad():
                log_probs = model(canvas, noise_mask=task.canvas(solutions, givens) == MASK_ID).logits[:, 1:]
            at_k = revealed_at == k
            replayed -= log_probs.gather(-1, solutions[..., None]).squeeze(-1).double()[at_k]
        assert torch.allclose(nll, replayed, atol=1e-9), order


def test_solver_order_reveals_a_most_constrained_cell_first():
    task = sudoku4()
    solutions, givens = task.test_puzzles(64)
    _, revealed_at = order_nll(
        _untrained(task), task, solutions, givens, "solver", torch.Generator().manual_seed(0)
    )
    ruled_out = task.known_order(solutions, givens).masked_fill(givens, -1.0)  # digits the givens rule out
    first = (revealed_at == 0).float().argmax(-1)
    assert torch.equal(ruled_out.gather(-1, first[:, None]).squeeze(-1), ruled_out.max(-1).values)
    assert (
        ruled_out.max(-1).values == task.n - 1
    ).float().mean() > 0.9  # naked singles: what a solver starts with
    with pytest.raises(ValueError, match="`order` must be one of .* got 'reading'"):
        order_nll(_untrained(task), task, solutions, givens, "reading", torch.Generator())


@pytest.fixture(scope="module")
def sudoku_model(tmp_path_factory):
    """`per_position`, 2 × 32, 500 steps of 64 training puzzles on 4 × 4 Sudoku (~17 s on a shared core)."""
    task = sudoku4()
    torch.manual_seed(0)
    model = task_model(task, "per_position", num_hidden_layers=2)
    steps = 500
    args = training_arguments(
        tmp_path_factory.mktemp("sudoku"),
        max_steps=steps,
        per_device_train_batch_size=64,
        learning_rate=3e-3,
        logging_steps=steps,
    )
    puzzles = task.train_puzzles(64 * steps, torch.Generator().manual_seed(1))
    data = Dataset.from_dict(task.training_rows(*puzzles))
    LoMDMTrainer(
        model=model, args=args, train_dataset=data, data_collator=DataCollatorForMaskedDiffusion(1)
    ).train()
    return task, model.eval()


def test_on_held_out_sudoku4_puzzles_the_order_decides_how_many_are_solved(sudoku_model):
    # The property the zoo is for: with the same model and the same quotas (one cell per step), an order read from
    # the denoiser's state (confidence) solves more held-out puzzles than a uniformly random order. Measured over
    # training seeds 0 / 1 (1,024 puzzles): 0.035 / 0.044 vs 0.003 / 0.004. The learned ranking of this tiny
    # model does NOT beat the random order reliably (ranked τ = 0: 0.010 / 0.008, about 2 s.e.; `lomdm` at the same
    # size: 0.004 / 0.005), so that is not asserted; `benchmarks/order_zoo_table.py` measures it at 2 × 64.
    task, model = sudoku_model
    solutions, givens = task.test_puzzles()

    def solved(**settings) -> float:
        rows = task.generate(model, solutions, givens, generator=torch.Generator().manual_seed(5), **settings)
        return float(task.is_solved(rows, solutions, givens).double().mean())

    steps = task.num_blanks
    confidence = solved(steps=steps, order="confidence")
    random_order = solved(steps=steps, order="learned_ranked", order_temperature=math.inf)
    standard_error = math.sqrt(
        (confidence * (1 - confidence) + random_order * (1 - random_order)) / solutions.shape[0]
    )
    assert confidence - random_order > 3 * standard_error, (confidence, random_order, standard_error)
