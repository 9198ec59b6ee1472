"""What `LoMDMTrainer` logs and evaluates: the objective's statistics over a logging window, and the NELBO bound
over an evaluation set (`nelbo_metrics`, the Trainer's `compute_metrics`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction

from .objective import LoMDMLossOutput
from .schedule_lomdm import saturated
from .units import perplexity

# Additive statistics of training batches, summed over a logging window (see `batch_statistics`).
_STATS = (
    "nelbo",
    "loss_velocity",
    "tokens",
    "exponent_sum",
    "exponent_square_sum",
    "exponent_count",
    "masked_count",
    "masked_exponent_sum",
    "masked_confidence_sum",
    "masked_exponent_confidence_sum",
    "masked_exponent_square_sum",
    "masked_confidence_square_sum",
    "saturated_count",
    "scored_count",
)


def nelbo_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """Per-token NELBO over an evaluation set from `LoMDMTrainer.prediction_step` outputs.

    `predictions`: `(N, 3)` per-sequence [NELBO, L_main, L_velocity]; `label_ids`: `(N,)` |M| per sequence.
    `nelbo = sum NELBO / sum |M|` (tokens weigh equally, not sequences) with its standard error over
    sequences `nelbo_stderr` (Monte-Carlo and data sampling together); `ppl_bound = exp(nelbo)` bounds the
    perplexity from above; `velocity` is the L_velocity part (L_main = `nelbo` - `velocity`, not repeated).
    `loss` repeats `nelbo` because Trainer needs `eval_loss` for its default `metric_for_best_model="loss"`
    (`load_best_model_at_end`, `EarlyStoppingCallback`); `prediction_step` returns no loss of its own.
    `without_repeats` drops the copy where the metrics are shown or saved.
    """
    per_sequence = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, 3)
    counts = np.asarray(eval_pred.label_ids, dtype=np.float64).reshape(-1)
    tokens = float(counts.sum())
    nelbo, _, velocity = (per_sequence.sum(0) / max(tokens, 1.0)).tolist()
    # Standard error of the ratio estimator sum NELBO / sum |M| over sequences (delta method).
    residuals = per_sequence[:, 0] - nelbo * counts
    n = len(counts)
    stderr = math.sqrt(n / max(n - 1, 1) * float((residuals**2).sum())) / max(tokens, 1.0)
    return {
        "loss": nelbo,
        "nelbo": nelbo,
        "nelbo_stderr": stderr,
        "velocity": velocity,
        "ppl_bound": perplexity(nelbo),
        "tokens": tokens,
    }


def without_repeats(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` without the `<prefix>loss` that `nelbo_metrics` repeats from `<prefix>nelbo` (`eval_loss`
    beside `eval_nelbo`): each quantity once in a printed or saved block. A copy; `metrics` is left as it is."""
    repeats = {
        key
        for key in metrics
        if key.endswith("loss") and metrics.get(key.removesuffix("loss") + "nelbo") == metrics[key]
    }
    return {key: value for key, value in metrics.items() if key not in repeats}


def batch_statistics(res: LoMDMLossOutput) -> torch.Tensor:
    """Additive float64 sums of one batch, keyed by name and stacked in the order of `_STATS`.

    NELBO and its L_velocity part, |M|; Σe, Σe² and the count over M; the moments (n, Σx, Σy, Σxy, Σx², Σy²) of x = e_i,
    y = p_θ(x_i | z_t) over the masked positions of the first noise sample, for Pearson's r; and the saturated
    scheduler sigmoids with the number of scores (zero for fixed schedules).
    """
    e = res.forward_exponents.double()
    in_m = res.noise_mask
    masked = ~torch.isnan(res.confidence)
    x, y = e[masked], res.confidence[masked].double()
    zero = torch.zeros((), device=e.device)
    scheduler = {"saturated_count": zero, "scored_count": zero}  # fixed schedule: no scheduler sigmoids
    if res.forward_scores is not None:
        scheduler = {"saturated_count": saturated(res.forward_scores, in_m).sum(), "scored_count": in_m.sum()}
    sums = {
        "nelbo": res.nelbo.sum(),
        "loss_velocity": res.loss_velocity.sum(),
        "tokens": res.num_tokens.sum(),
        "exponent_sum": e[in_m].sum(),
        "exponent_square_sum": e[in_m].square().sum(),
        "exponent_count": in_m.sum(),
        "masked_count": masked.sum(),
        "masked_exponent_sum": x.sum(),
        "masked_confidence_sum": y.sum(),
        "masked_exponent_confidence_sum": (x * y).sum(),
        "masked_exponent_square_sum": x.square().sum(),
        "masked_confidence_square_sum": y.square().sum(),
        **scheduler,
    }
    return torch.stack([sums[name].double() for name in _STATS])


def summarize(stats: torch.Tensor) -> dict[str, float]:
    """The logged statistics of a window's summed `batch_statistics`."""
    s = dict(zip(_STATS, stats.tolist()))
    tokens = max(s["tokens"], 1.0)
    num_exponents, num_masked = max(s["exponent_count"], 1.0), max(s["masked_count"], 1.0)
    mean_e = s["exponent_sum"] / num_exponents
    logs = {
        "nelbo": s["nelbo"] / tokens,
        "velocity": s["loss_velocity"] / tokens,
        "exponent_mean": mean_e,
        "exponent_std": math.sqrt(max(s["exponent_square_sum"] / num_exponents - mean_e**2, 0.0)),
    }
    if s["scored_count"] > 0:
        logs["scheduler_saturated_fraction"] = s["saturated_count"] / s["scored_count"]
    mean_x, mean_y = s["masked_exponent_sum"] / num_masked, s["masked_confidence_sum"] / num_masked
    cov = s["masked_exponent_confidence_sum"] / num_masked - mean_x * mean_y
    var_x = s["masked_exponent_square_sum"] / num_masked - mean_x**2
    var_y = s["masked_confidence_square_sum"] / num_masked - mean_y**2
    if var_x > 1e-12 and var_y > 1e-12:  # undefined for fixed schedules (every e equal)
        logs["exponent_confidence_corr"] = cov / math.sqrt(var_x * var_y)
    return logs


__all__ = ["batch_statistics", "nelbo_metrics", "summarize", "without_repeats"]
