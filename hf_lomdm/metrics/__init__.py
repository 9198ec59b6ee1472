"""`evaluate` metric modules shipped with the package; load them offline with `evaluate.load(metric_path(name))`."""

from __future__ import annotations

from pathlib import Path

METRICS = ("generative_perplexity", "nelbo_perplexity")


def metric_path(name: str) -> str:
    """Local path of a shipped metric module, for `evaluate.load` (works with HF_HUB_OFFLINE=1)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {METRICS}.")
    return str(Path(__file__).parent / name / f"{name}.py")


__all__ = ["METRICS", "metric_path"]
