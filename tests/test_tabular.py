"""Tabular masked diffusion: column tokenizer, fidelity metrics, sampling on columns, known-order recovery."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.evaluation import nelbo_perplexity
from hf_lomdm.tabular import (
    TabularTokenizer,
    column_exponents,
    column_pair_trend,
    column_shape,
    fidelity,
    known_order_table,
    read_table,
    sample_token_rows,
    tabular_dataset,
    train_tabular_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def mixed_table(num_rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Numeric (continuous, integer with a heavy atom at 0, few distinct values) and categorical columns, with
    missing values in both kinds."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "income": rng.lognormal(10.0, 1.0, num_rows),
            "gain": np.where(rng.random(num_rows) < 0.9, 0, rng.integers(100, 10_000, num_rows)),
            "grade": rng.integers(1, 5, num_rows),
            "city": rng.choice(["Oslo", "Lima", "Pune"], num_rows),
            "flag": rng.random(num_rows) < 0.3,
        }
    )
    table.loc[[3, 17], "income"] = np.nan
    table.loc[[5], "city"] = None
    return table


def tiny_tabular_model(
    tokenizer: TabularTokenizer, schedule: str, seed: int = 0, **overrides
) -> LoMDMForMaskedDiffusion:
    torch.manual_seed(seed)
    kwargs = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "schedule": schedule,
        "scheduler_intermediate_size": 32,
        "scheduler_head_size": 16,
    }
    kwargs.update(overrides)
    return LoMDMForMaskedDiffusion(LoMDMConfig(**tokenizer.config_kwargs(), **kwargs)).eval()


# -- tokenizer ---------------------------------------------------------------------------------------------------


def test_round_trip_recovers_categories_and_keeps_numbers_inside_their_bins():
    table = mixed_table()
    tokenizer = TabularTokenizer.fit(table, num_bins=8)
    ids = tokenizer.encode(table)
    decoded = tokenizer.decode(ids, seed=0)
    for name in ("city", "flag"):
        pd.testing.assert_series_equal(
            decoded[name].astype(object), table[name].astype(object), check_names=False
        )
    for column in tokenizer.columns:
        if column.kind != "numeric":
            continue
        original, value = table[column.name], decoded[column.name]
        assert original.isna().tolist() == value.isna().tolist()
        local = (ids[:, tokenizer.column_names.index(column.name)] - column.offset).numpy()
        present = original.notna().to_numpy()
        low, high = np.asarray(column.bin_low)[local[present]], np.asarray(column.bin_high)[local[present]]
        for values in (original[present].to_numpy(float), value[present].to_numpy(float)):
            assert np.all((low <= values) & (values <= high))
    assert tokenizer.encode(decoded).tolist() == ids.tolist()  # decoded values fall back into the same bins


def test_heavy_value_and_few_distinct_values_get_exact_bins():
    table = mixed_table()
    tokenizer = TabularTokenizer.fit(table, num_bins=8)
    gain = tokenizer.columns[tokenizer.column_names.index("gain")]
    assert gain.bin_low[0] == gain.bin_high[0] == 0  # 90% of rows: a bin of its own, decoded exactly
    assert gain.integer and gain.num_values <= 8
    grade = tokenizer.columns[tokenizer.column_names.index("grade")]
    assert grade.bin_low == grade.bin_high == [1, 2, 3, 4]  # 4 distinct values <= num_bins: one bin each
    decoded = tokenizer.decode(tokenizer.encode(table), seed=3)
    assert decoded["grade"].tolist() == table["grade"].tolist()
    assert (decoded["gain"] == 0).tolist() == (table["gain"] == 0).tolist()


def test_save_load_gives_identical_encodings(tmp_path):
    table = mixed_table()
    tokenizer = TabularTokenizer.fit(table, num_bins=8)
    tokenizer.save_pretrained(tmp_path)
    loaded = TabularTokenizer.from_pretrained(tmp_path)
    assert loaded.encode(table).tolist() == tokenizer.encode(table).tolist()
    ids = tokenizer.encode(table)
    pd.testing.assert_frame_equal(loaded.decode(ids, seed=5), tokenizer.decode(ids, seed=5))
    assert loaded.config_kwargs() == tokenizer.config_kwargs()


def test_columns_own_disjoint_token_ranges_after_the_mask_token():
    tokenizer = TabularTokenizer.fit(mixed_table(), num_bins=8)
    ranges = tokenizer.token_ranges()
    assert ranges[0, 0] == tokenizer.mask_token_id + 1
    assert ranges[1:, 0].tolist() == ranges[:-1, 1].tolist()  # contiguous, no overlap
    assert ranges[-1, 1] == tokenizer.vocab_size
    assert tokenizer.config_kwargs() == {
        "vocab_size": tokenizer.vocab_size,
        "max_position_embeddings": 5,
        "mask_token_id": 0,
    }


def test_no_token_of_one_column_decodes_in_another_column():
    table = mixed_table()
    tokenizer = TabularTokenizer.fit(table, num_bins=8)
    ids = tokenizer.encode(table)[:4]
    for column in range(tokenizer.num_columns):
        for foreign in range(tokenizer.num_columns):
            if foreign == column:
                continue
            swapped = ids.clone()
            swapped[1, column] = tokenizer.token_ranges()[foreign, 0]
            assert not tokenizer.valid_tokens(swapped)[1, column]
            with pytest.raises(ValueError, match=f"not a token of column '{tokenizer.column_names[column]}'"):
                tokenizer.decode(swapped)
    masked = ids.clone()
    masked[0, 0] = tokenizer.mask_token_id
    with pytest.raises(ValueError, match="token id 0"):
        tokenizer.decode(masked)


def test_unseen_category_and_unexpected_missing_value_raise():
    table = mixed_table()
    tokenizer = TabularTokenizer.fit(table, num_bins=8)
    unseen = table.head(3).copy()
    unseen.loc[0, "city"] = "Quito"
    with pytest.raises(ValueError, match="unseen at fit time.*Quito"):
        tokenizer.encode(unseen)
    missing = table.head(3).copy()
    missing["grade"] = missing["grade"].astype(float)
    missing.loc[1, "grade"] = np.nan
    with pytest.raises(ValueError, match="'grade' has missing values"):
        tokenizer.encode(missing)
    with pytest.raises(ValueError, match="lacks the fitted columns"):
        tokenizer.encode(table.drop(columns="city"))


def test_read_table_names_a_missing_file_and_reads_uci_missing_values(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_table(tmp_path / "adult.data")
    path = tmp_path / "t.data"
    path.write_text("39, State-gov, 77516\n50, ?, 83311\n")
    table = read_table(path, column_names=["age", "workclass", "fnlwgt"])
    assert table["workclass"].tolist()[0] == "State-gov" and pd.isna(table["workclass"][1])
    dataset = tabular_dataset(table, TabularTokenizer.fit(table))
    assert len(dataset) == 2 and len(dataset[0]["input_ids"]) == 3


# -- fidelity metrics --------------------------------------------------------------------------------------------


def test_shape_and_trend_are_one_on_identical_tables_and_match_hand_computed_values():
    table = mixed_table()
    kinds = TabularTokenizer.fit(table).column_kinds
    report = fidelity(table, table, kinds)
    assert report.shape == pytest.approx(1.0) and report.trend == pytest.approx(1.0)
    # KS of {0, 1, 2, 3} vs {2, 3, 4, 5}: the CDFs differ most at x = 1 (0.5 vs 0) -> Shape 0.5.
    assert column_shape(pd.Series([0, 1, 2, 3]), pd.Series([2, 3, 4, 5]), "numeric") == pytest.approx(0.5)
    # TVD of (a: 3/4, b: 1/4) vs (a: 1/4, b: 1/4, c: 1/2) = (1/2 + 0 + 1/2) / 2 = 1/2.
    assert column_shape(pd.Series(list("aaab")), pd.Series(list("abcc")), "categorical") == pytest.approx(0.5)
    # Correlation +1 vs -1: 1 - |1 - (-1)| / 2 = 0.
    real = pd.DataFrame({"x": [0.0, 1, 2, 3], "y": [0.0, 1, 2, 3]})
    flipped = pd.DataFrame({"x": [0.0, 1, 2, 3], "y": [3.0, 2, 1, 0]})
    assert column_pair_trend(real, flipped, ("x", "y"), {"x": "numeric", "y": "numeric"}) == pytest.approx(
        0.0
    )
    # Joint (a,a), (b,b) vs (a,b), (b,a): disjoint supports -> contingency similarity 0.
    real = pd.DataFrame({"u": ["a", "b"], "v": ["a", "b"]})
    crossed = pd.DataFrame({"u": ["a", "b"], "v": ["b", "a"]})
    kinds = {"u": "categorical", "v": "categorical"}
    assert column_pair_trend(real, crossed, ("u", "v"), kinds) == pytest.approx(0.0)


# -- sampling on columns -----------------------------------------------------------------------------------------


def test_sampled_rows_are_complete_and_hold_only_their_columns_tokens():
    table = known_order_table(64)
    tokenizer = TabularTokenizer.fit(table)
    model = tiny_tabular_model(tokenizer, "per_position")  # untrained: ~70% of its mass is on foreign tokens
    first_draw = model.generate(
        torch.full((48, 3), tokenizer.mask_token_id), generator=torch.Generator().manual_seed(0)
    )
    assert not bool(
        tokenizer.valid_tokens(first_draw).all()
    )  # so the column restriction below has work to do
    ids = sample_token_rows(model, tokenizer, 48, batch_size=32, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (48, tokenizer.num_columns)
    assert not bool((ids == tokenizer.mask_token_id).any())
    assert bool(tokenizer.valid_tokens(ids).all())
    decoded = tokenizer.decode(ids)
    assert list(decoded.columns) == list(table.columns) and len(decoded) == 48


def test_learned_order_sampler_reveals_a_column_first_in_proportion_to_its_exponent():
    table = known_order_table(64)
    tokenizer = TabularTokenizer.fit(table)
    model = tiny_tabular_model(tokenizer, "per_position")
    with torch.no_grad():
        model.position_scores.weight.copy_(torch.tensor([2.0, 0.0, -2.0]))
    exponents = column_exponents(model, tokenizer.encode(table.head(1)))
    canvas = torch.full((2000, 3), tokenizer.mask_token_id)
    out = model.generate(
        canvas,
        order="learned",
        steps=None,
        return_dict_in_generate=True,
        output_order=True,
        generator=torch.Generator().manual_seed(0),
    )
    first = out.order.argmin(-1)  # exact sampler: one column per pass, so the pass index orders the columns
    frequency = torch.bincount(first, minlength=3).double() / len(first)
    expected = exponents / exponents.sum()  # P(column i first) = e_i / sum_j e_j (reveal times u^{1/e})
    assert frequency.tolist() == pytest.approx(expected.tolist(), abs=4 * math.sqrt(0.25 / len(first)))


# -- known-order recovery ----------------------------------------------------------------------------------------


def known_order_data() -> tuple[TabularTokenizer, torch.LongTensor, torch.LongTensor]:
    # C = max(A, B) with A, B independent. The effect is put first in the row, so a preference for early or late
    # positions cannot pass for the known order.
    train = known_order_table(4096, seed=1)[["C", "A", "B"]]
    val = known_order_table(4096, seed=2)[["C", "A", "B"]]
    tokenizer = TabularTokenizer.fit(pd.concat([train, val]))
    return tokenizer, tokenizer.encode(train), tokenizer.encode(val)


def train_known_order(schedule: str, steps: int, output_dir) -> tuple[float, dict[str, float]]:
    """Train a tiny model on known-order rows; returns (validation NELBO per row, exponent per column name)."""
    tokenizer, train_ids, val_ids = known_order_data()
    model = tiny_tabular_model(tokenizer, schedule).train()
    # The scheduler's learning rate is the denoiser's: Adam moves the scores by about lr per step whatever the
    # gradient's size, and a larger rate can lock in an order before the denoiser has learned any conditional.
    train_tabular_model(
        model,
        train_ids,
        val_ids,
        output_dir=output_dir / schedule,
        max_steps=steps,
        batch_size=256,
        learning_rate=1e-2,
        scheduler_learning_rate=1e-2,
        seed=0,
    )
    bound = nelbo_perplexity(
        model, val_ids, time_samples=64, batch_size=16384, generator=torch.Generator().manual_seed(0)
    )  # the same time draws for every model
    exponents = column_exponents(model, val_ids[:1])
    return bound.nelbo * tokenizer.num_columns, dict(zip(tokenizer.column_names, exponents.tolist()))


def test_training_lowers_the_bound_and_keeps_the_best_evaluation_weights(tmp_path):
    # The short version of the run below (30 steps, 2 s): what `train_tabular_model` promises, not the order.
    train = known_order_table(512, seed=1)[["C", "A", "B"]]
    val = known_order_table(256, seed=2)[["C", "A", "B"]]
    tokenizer = TabularTokenizer.fit(pd.concat([train, val]))
    train_ids, val_ids = tokenizer.encode(train), tokenizer.encode(val)
    model = tiny_tabular_model(tokenizer, "per_position").train()

    def bound() -> float:  # nats per row, the same time draws before and after
        result = nelbo_perplexity(
            model, val_ids, time_samples=16, batch_size=4096, generator=torch.Generator().manual_seed(0)
        )
        return result.nelbo * tokenizer.num_columns

    before = bound()
    result = train_tabular_model(
        model,
        train_ids,
        val_ids,
        output_dir=tmp_path,
        max_steps=30,
        eval_steps=10,
        batch_size=64,
        learning_rate=1e-2,
        scheduler_learning_rate=1e-2,
        seed=0,
    )
    assert [step for step, _ in result.history] == [10, 20, 30]
    assert (result.best_step, result.best_nelbo_per_row) == min(result.history, key=lambda item: item[1])
    best = load_file(str(tmp_path / f"checkpoint-{result.best_step}" / "model.safetensors"))
    weights = model.state_dict()
    assert all(torch.equal(weights[name], tensor) for name, tensor in best.items())  # the best evaluation's
    assert not model.training and bound() < before - 0.5, before  # measured: 8.71 -> 7.39


def test_early_stopping_ends_training_once_the_patience_is_exhausted(tmp_path):
    # Learning rate 0: the weights never change and every evaluation draws the same times (common random numbers),
    # so the validation NELBO is identical at every evaluation and never improves after the first one.
    train = known_order_table(256, seed=1)[["C", "A", "B"]]
    val = known_order_table(128, seed=2)[["C", "A", "B"]]
    tokenizer = TabularTokenizer.fit(pd.concat([train, val]))
    train_ids, val_ids = tokenizer.encode(train), tokenizer.encode(val)
    settings = {"batch_size": 32, "learning_rate": 0.0, "seed": 0}
    model = tiny_tabular_model(tokenizer, "linear").train()
    result = train_tabular_model(
        model,
        train_ids,
        val_ids,
        output_dir=tmp_path / "patience",
        max_steps=40,
        eval_steps=4,
        early_stopping_patience=2,
        **settings,
    )
    assert [step for step, _ in result.history] == [4, 8, 12]  # best at 4, then two evaluations without gain
    assert len({nelbo for _, nelbo in result.history}) == 1
    assert (result.stopped_step, result.stopped_early, result.best_step) == (12, True, 4)
    full = train_tabular_model(  # without patience the same run goes to `max_steps`
        tiny_tabular_model(tokenizer, "linear").train(),
        train_ids,
        val_ids,
        output_dir=tmp_path / "full",
        max_steps=20,
        eval_steps=4,
        **settings,
    )
    assert (full.stopped_step, full.stopped_early, len(full.history)) == (20, False, 5)
    with pytest.raises(ValueError, match="eval_steps"):
        train_tabular_model(
            model, train_ids, val_ids, output_dir=tmp_path, max_steps=4, early_stopping_patience=1
        )


@pytest.mark.slow
def test_learned_schedule_reveals_causes_before_their_effect(tmp_path):
    # Seen on 7 of 7 seeds / step counts (600-1500 steps): e_C 0.40-0.65 against 0.72-0.88 for A and B.
    _, e = train_known_order("per_position", 600, tmp_path)
    assert min(e["A"], e["B"]) > e["C"], e  # larger exponent = revealed earlier: causes first


@pytest.mark.slow
def test_learned_schedule_reaches_lower_validation_nelbo_than_linear(tmp_path):
    # Same data, steps, initialisation and noise seed. At 1500 steps the gap was +0.055 and +0.009 nats per row
    # (seeds 0 and 2, ±0.012 evaluation error each); at 600 steps it is within ±0.015 either way.
    nelbo_linear, _ = train_known_order("linear", 1500, tmp_path)
    nelbo_learned, e = train_known_order("per_position", 1500, tmp_path)
    assert min(e["A"], e["B"]) > e["C"], e
    assert nelbo_learned < nelbo_linear, (nelbo_learned, nelbo_linear)


def test_column_restriction_lowers_the_bound_and_every_sampled_token_is_in_its_column(tmp_path):
    # The same model, data, seed and 30 steps, with and without `allowed_tokens`: the restricted softmax puts no
    # mass on other columns' tokens, so its bound (over each column's own vocabulary) is lower.
    train = known_order_table(512, seed=1)[["C", "A", "B"]]
    val = known_order_table(256, seed=2)[["C", "A", "B"]]
    tokenizer = TabularTokenizer.fit(pd.concat([train, val]))
    train_ids, val_ids = tokenizer.encode(train), tokenizer.encode(val)
    allowed = tokenizer.allowed_tokens()
    assert allowed.sum(-1).tolist() == [column.size for column in tokenizer.columns]
    bounds = {}
    for name, restriction in (("free", None), ("restricted", allowed)):
        model = tiny_tabular_model(tokenizer, "per_position").train()
        train_tabular_model(
            model,
            train_ids,
            val_ids,
            output_dir=tmp_path / name,
            max_steps=30,
            batch_size=64,
            learning_rate=1e-2,
            allowed_tokens=restriction,
        )
        bounds[name] = nelbo_perplexity(
            model,
            val_ids,
            time_samples=16,
            batch_size=4096,
            allowed_tokens=restriction,
            generator=torch.Generator().manual_seed(0),
        )
    free, restricted = bounds["free"], bounds["restricted"]
    assert restricted.nelbo < free.nelbo - 3 * math.hypot(restricted.stderr, free.stderr), (restricted, free)
    ids = sample_token_rows(model, tokenizer, 256, generator=torch.Generator().manual_seed(0), steps=2)
    assert bool(tokenizer.valid_tokens(ids).all())
