"""Schedule math of LoMDM: the single home of every formula of SPEC §1.

Every schedule has the exponent form (LoMDM, arXiv 2602.02112, Eq. 8; MDM(LS), arXiv 2511.19152, Eq. 5)

    alpha^i(t) = 1 - t**e_i,   P(z_t^i = m) = t**e_i,   A^i(t) = -d_t alpha^i / (1 - alpha^i) = e_i / t.

Time enters every function as `log_t`. The importance sampler of the objective draws times as small as
1e-300 and below when the smallest exponent is 0.05 (`t = u**(1/a)` with `a = 0.025`), which underflow
even in float64; every quantity needed here is finite and smooth in `log t`.

Shapes: B = batch, L = sequence length. `log_t` must broadcast against the exponents `e: (B, L)`
(pass `(B, 1)`). Schedule math runs in float32 or wider; callers cast bf16 scores up first.

The objective (`objective.py`), the sampler (`sampler_lomdm.py`) and the tests call these functions;
no other file re-types a formula.
"""

from __future__ import annotations

import math

import torch

# Uniform draws are clamped away from 0 so that log(u) stays finite (P(u < 1e-300) is 0 in float64).
_U_MIN = 1e-300


def _mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is 1, per row `(B, 1)` (0 for an empty row)."""
    inside = torch.where(mask > 0, values, torch.zeros_like(values))  # what lies outside M never leaks in
    return inside.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)


def normsig(scores: torch.Tensor, noise_mask: torch.Tensor) -> torch.Tensor:
    """NormSig(v)_i = sigmoid(ṽ_i) - mean_{j in M} sigmoid(ṽ_j) with ṽ = v - mean_{j in M} v_j; zero outside `M`.

    LoMDM Eq. 12 with the scores centred first (SPEC §1): NormSig of raw scores only sees their differences, so
    nothing holds their common mode; at a high scheduler learning rate it drifted until every sigmoid saturated
    and the exponents froze. Centred, the scores straddle 0 where the sigmoid is steepest.

    Args:
        scores: `(B, L)` raw scheduler outputs `v`.
        noise_mask: `(B, L)` bool, the positions `M` that may be noised; both means run over them only.
    """
    scores = scores.float()
    mask = noise_mask.to(scores.dtype)
    sig = torch.sigmoid(scores - _mean_over(scores, mask))  # (B, L)
    return (sig - _mean_over(sig, mask)) * mask


def exponents(scores: torch.Tensor, noise_mask: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """Learned exponents e_i = c1 + c2 * NormSig(v)_i, in (c1 - c2, c1 + c2); equal to c1 outside `M`."""
    return c1 + c2 * normsig(scores, noise_mask)


def saturated(scores: torch.Tensor, noise_mask: torch.Tensor, tol: float = 0.01) -> torch.Tensor:
    """`(B, L)` bool: positions of M whose NormSig sigmoid is within `tol` of 0 or 1 (its gradient has all but
    vanished: sigmoid' < tol). A scheduler with most positions saturated has stopped learning."""
    scores = scores.float()
    sig = torch.sigmoid(scores - _mean_over(scores, noise_mask.to(scores.dtype)))
    return ((sig < tol) | (sig > 1 - tol)) & noise_mask


def smallest_exponent(schedule: str, c1: float, c2: float) -> float:
    """Infimum of the exponents a schedule can produce (sets the importance sampler's power `a`)."""
    if schedule == "linear":
        return 1.0
    if schedule == "polynomial":
        return c1
    return c1 - c2


def mask_prob(log_t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """P(z_t^i = m) = 1 - alpha^i(t) = t**e_i."""
    return torch.exp(e * log_t)


def alpha(log_t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """alpha^i(t) = 1 - t**e_i (probability that token i is still clean at time t)."""
    return -torch.expm1(e * log_t)


def log_velocity(log_t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """log A^i(t) = log(e_i / t) (LoMDM Eq. 9: A = -d_t alpha / (1 - alpha))."""
    return torch.log(e) - log_t


def velocity(log_t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """A^i(t) = e_i / t."""
    return torch.exp(log_velocity(log_t, e))


def velocity_matching(e: torch.Tensor, e_hat: torch.Tensor) -> torch.Tensor:
    """t * [A (log A - log Â) - (A - Â)] = e log(e / ê) - (e - ê) >= 0 (LoMDM Eq. 10, L_velocity per token).

    With A = e/t and Â = ê/t the velocity term is this quantity divided by t; it vanishes iff e = ê.
    """
    return e * (torch.log(e) - torch.log(e_hat)) - (e - e_hat)


def log_q(
    z_is_mask: torch.Tensor, log_t: torch.Tensor, e: torch.Tensor, noise_mask: torch.Tensor
) -> torch.Tensor:
    """log q(z_t | x) = sum_{i in M} [z_t^i = m ? e_i log t : log(1 - t**e_i)], per sequence `(B,)`.

    The clean branch uses log(-expm1(e log t)); it is evaluated on a dummy value where the token is
    masked so that its infinite derivative at t = 1 cannot leak a NaN into the gradient.
    """
    e_log_t = e * log_t  # (B, L)
    safe = torch.where(z_is_mask, torch.full_like(e_log_t, -1.0), e_log_t)
    per_token = torch.where(z_is_mask, e_log_t, torch.log(-torch.expm1(safe)))
    return (per_token * noise_mask.to(per_token.dtype)).sum(-1)


def unmask_prob(log_s: torch.Tensor, log_t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """P(z_s^i != m | z_t^i = m) = 1 - (s/t)**e_i for s < t (reverse step of the tau-grid sampler)."""
    return -torch.expm1(e * (log_s - log_t))


def reveal_log_time(log_t: torch.Tensor, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """First-hitting time: a token still masked at t is revealed at s = t * u**(1/e), u ~ U(0, 1)."""
    return log_t + torch.log(u.clamp(min=_U_MIN)) / e


def mixture_power(e: torch.Tensor, noise_mask: torch.Tensor, floor: float) -> torch.Tensor:
    """Power `a` of each row's time mixture: half the row's smallest exponent on M, `(B,)` float64, detached.

    Any `a` in (0, min e) keeps the importance-sampled NELBO unbiased with finite variance; the largest safe value,
    rather than the schedule's floor `(c1 - c2) / 2`, wastes fewer draws at tiny t (5.8x lower per-row variance
    measured at e = 0.7). `floor` is used for rows with an empty M.
    """
    smallest = e.detach().double().masked_fill(~noise_mask, math.inf).amin(-1)  # (B,)
    return torch.where(torch.isfinite(smallest), smallest, torch.full_like(smallest, 2 * floor)) / 2


def log_time_density(log_t: torch.Tensor, a: torch.Tensor | float, uniform_weight: float) -> torch.Tensor:
    """log q(t) for the defensive mixture q(t) = w + (1 - w) * a * t**(a - 1) on (0, 1] (SPEC §1)."""
    log_t = log_t.double()
    a = torch.as_tensor(a, dtype=torch.float64, device=log_t.device)
    uniform = torch.full_like(log_t, math.log(uniform_weight) if uniform_weight > 0 else -math.inf)
    if uniform_weight >= 1:
        return uniform
    power = math.log1p(-uniform_weight) + torch.log(a) + (a - 1.0) * log_t
    return torch.logaddexp(uniform, power)


def sample_log_times(
    u: torch.Tensor, a: torch.Tensor | float, uniform_weight: float, iterations: int = 100
) -> torch.Tensor:
    """Inverse CDF of the mixture q: solve F(t) = w t + (1 - w) t**a = u for log t by bisection (float64).

    F is increasing in s = log t and F(s) <= exp(a s) for s <= 0, so the root lies in [log(u) / a, 0].
    `a` is a float or a tensor broadcastable to `u` (one mixture per row).
    """
    a = torch.as_tensor(a, dtype=torch.float64, device=u.device)
    if not bool(((a > 0) & (a <= 1)).all()):
        raise ValueError(f"the mixture power `a` must be in (0, 1], got {a}.")
    if not 0.0 <= uniform_weight <= 1.0:
        raise ValueError(f"`uniform_weight` must be in [0, 1], got {uniform_weight}.")
    log_u = torch.log(u.double().clamp(min=_U_MIN))
    log_w = math.log(uniform_weight) if uniform_weight > 0 else -math.inf
    log_1mw = math.log1p(-uniform_weight) if uniform_weight < 1 else -math.inf
    lo, hi = log_u / a, torch.zeros_like(log_u)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        log_cdf = torch.logaddexp(log_w + mid, log_1mw + a * mid)  # log F(exp(mid)), compared in log space
        below = log_cdf < log_u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


__all__ = [
    "alpha",
    "exponents",
    "log_q",
    "log_time_density",
    "log_velocity",
    "mask_prob",
    "mixture_power",
    "normsig",
    "reveal_log_time",
    "sample_log_times",
    "saturated",
    "smallest_exponent",
    "unmask_prob",
    "velocity",
    "velocity_matching",
]
