"""`evaluate` metric modules shipped with the package; load them offline with `evaluate.load(metric_path(name))`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

METRICS = ("generative_perplexity", "nelbo_perplexity")


def text_metric_info(description: str, inputs_description: str) -> evaluate.MetricInfo:
    """The `evaluate.MetricInfo` of a shipped metric: its description and arguments, texts as `predictions`."""
    import datasets
    import evaluate  # imported on use: `metric_path` needs neither library

    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("string")}),
    )


def metric_path(name: str) -> str:
    """Local path of a shipped metric module, for `evaluate.load` (works with HF_HUB_OFFLINE=1)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {METRICS}.")
    return str(Path(__file__).parent / name / f"{name}.py")


__all__ = ["METRICS", "metric_path", "text_metric_info"]
