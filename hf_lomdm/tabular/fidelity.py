"""Fidelity of synthetic table rows, following the SDMetrics definitions.

Shape = 1 - KS statistic (numeric) or 1 - total variation distance (categorical); Trend = correlation
similarity 1 - |ρ_real - ρ_synth| / 2 (Pearson, numeric pairs) or contingency similarity 1 - TVD of the joint
distribution (other pairs; numeric columns cut into 10 equal-width bins of the real data's range).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .tokenizer import ColumnKind

# SDMetrics' ContingencySimilarity cuts numeric columns into this many equal-width bins of the real range.
CONTINGENCY_BINS = 10


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)|."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def _tvd(real: pd.Series | pd.DataFrame, synthetic: pd.Series | pd.DataFrame) -> float:
    """Total variation distance between the empirical (joint) distributions; missing is a value of its own."""
    p = real.value_counts(normalize=True, dropna=False)
    q = synthetic.value_counts(normalize=True, dropna=False)
    p, q = p.align(q, fill_value=0.0)
    return 0.5 * float((p - q).abs().sum())


def column_shape(real: pd.Series, synthetic: pd.Series, kind: ColumnKind) -> float:
    """Shape score: 1 - KS statistic over the non-missing values (numeric) or 1 - TVD (categorical)."""
    if kind == "numeric":
        a, b = real.dropna().to_numpy(np.float64), synthetic.dropna().to_numpy(np.float64)
        if len(a) == 0 or len(b) == 0:
            return math.nan
        return 1.0 - _ks_statistic(a, b)
    return 1.0 - _tvd(real.astype(object), synthetic.astype(object))


def _discretize(real: pd.Series, synthetic: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Numeric column -> equal-width bin index over the real range (outer bins open), missing kept as NaN."""
    edges = np.histogram_bin_edges(real.dropna().to_numpy(np.float64), bins=CONTINGENCY_BINS)
    cuts = np.r_[-np.inf, edges[1:-1], np.inf]
    return (
        pd.cut(real.astype(np.float64), cuts, labels=False),
        pd.cut(synthetic.astype(np.float64), cuts, labels=False),
    )


def column_pair_trend(
    real: pd.DataFrame, synthetic: pd.DataFrame, columns: tuple[str, str], kinds: Mapping[str, ColumnKind]
) -> float:
    """Trend score of a column pair: correlation similarity 1 - |ρ_r - ρ_s| / 2 (Pearson, rows where both are
    present) for two numeric columns, else contingency similarity 1 - TVD of the joint distribution."""
    first, second = columns
    if kinds[first] == kinds[second] == "numeric":
        rho = []
        for table in (real, synthetic):
            pair = table[[first, second]].dropna().to_numpy(np.float64)
            if len(pair) < 2 or pair[:, 0].std() == 0 or pair[:, 1].std() == 0:
                return math.nan  # correlation undefined
            rho.append(np.corrcoef(pair[:, 0], pair[:, 1])[0, 1])
        return 1.0 - abs(rho[0] - rho[1]) / 2.0
    joint_real, joint_synthetic = {}, {}
    for name in columns:
        if kinds[name] == "numeric":
            joint_real[name], joint_synthetic[name] = _discretize(real[name], synthetic[name])
        else:
            joint_real[name], joint_synthetic[name] = (
                real[name].astype(object),
                synthetic[name].astype(object),
            )
    return 1.0 - _tvd(pd.DataFrame(joint_real), pd.DataFrame(joint_synthetic))


@dataclass
class FidelityReport:
    """Shape and Trend of synthetic rows against real rows (higher is better, 1 = identical statistics).

    Args:
        shape: mean of the per-column Shape scores.
        trend: mean of the per-pair Trend scores (pairs with an undefined correlation are left out).
        shapes: Shape per column.
        trends: Trend per column pair, keyed `"first|second"`.
    """

    shape: float
    trend: float
    shapes: dict[str, float]
    trends: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fidelity(real: pd.DataFrame, synthetic: pd.DataFrame, kinds: Mapping[str, ColumnKind]) -> FidelityReport:
    """Per-column Shape and pairwise Trend of `synthetic` against `real` over the columns named in `kinds`."""
    names = list(kinds)
    absent = [name for name in names if name not in real.columns or name not in synthetic.columns]
    if absent:
        raise ValueError(f"both tables need the columns {absent}.")
    shapes = {name: float(column_shape(real[name], synthetic[name], kinds[name])) for name in names}
    trends = {
        f"{a}|{b}": float(column_pair_trend(real, synthetic, (a, b), kinds))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    trend_values = [v for v in trends.values() if not math.isnan(v)]
    return FidelityReport(
        shape=float(np.nanmean(list(shapes.values()))),
        trend=float(np.mean(trend_values)) if trend_values else math.nan,
        shapes=shapes,
        trends=trends,
    )


__all__ = ["CONTINGENCY_BINS", "FidelityReport", "column_pair_trend", "column_shape", "fidelity"]
