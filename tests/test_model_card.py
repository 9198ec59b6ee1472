"""Model cards: filled from the template, parseable by ModelCard.load, carrying the eval results."""

from __future__ import annotations

import pytest
from conftest import tiny_model
from huggingface_hub import ModelCard
from test_lm_eval import word_tokenizer

from hf_lomdm.model_card import ORDER_PLOT_NAME, build_model_card, plot_reveal_order, write_model_card


def test_generated_card_parses_and_carries_eval_results(tmp_path):
    model = tiny_model(schedule="lomdm", vocab_size=40)
    metrics = {"nelbo": 3.21, "ppl_bound": 24.78, "tokens": 1234}
    write_model_card(tmp_path, model, word_tokenizer(), eval_metrics=metrics, samples=["the cat sat"],
                     repo_id="tester/tiny", dataset_name="shakespeare")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert "schedule-lomdm" in card.data.tags and card.data.datasets == ["shakespeare"]
    (result,) = card.data.eval_results
    assert result.metric_type == "perplexity" and result.metric_value == pytest.approx(24.78)
    assert "24.78" in card.text and "the cat sat" in card.text and "tester/tiny" in card.text
    assert "`forward_scheduler`, `reverse_scheduler`" in card.text
    pytest.importorskip("matplotlib")
    assert (tmp_path / ORDER_PLOT_NAME).stat().st_size > 1000 and ORDER_PLOT_NAME in card.text


def test_card_without_evaluation_says_so():
    card = build_model_card(tiny_model(schedule="linear"))
    assert card.data.eval_results is None and "Not evaluated yet." in card.text


def test_reveal_order_plot_needs_matching_lengths(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="same length"):
        plot_reveal_order(["a", "b"], [0], tmp_path / "x.png")
