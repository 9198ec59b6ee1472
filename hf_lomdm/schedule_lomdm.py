"""Schedule math of LoMDM: the single home of every formula of the model.

Every schedule has the exponent form (LoMDM, arXiv 2602.02112, Eq. 8; MDM(LS), arXiv 2511.19152, Eq. 5)

    alpha^i(t) = 1 - t**e_i,   P(z_t^i = m) = t**e_i,   A^i(t) = -d_t alpha^i / (1 - alpha^i) = e_i / t.

Time enters every function as `log_t`. The importance sampler of the objective draws times as small as
1e-300 and below when the smallest exponent is 0.05 (`t = u**(1/a)` with `a = 0.025`), which underflow
even in float64; every quantity needed here is finite and smooth in `log t`.

Shapes: B = batch, L = sequence length. `log_t` must broadcast against the exponents `e: (B, L)`
(pass `(B, 1)`). Schedule math runs in float32 or wider; callers cast bf16 scores up first.

This module is also the home of two things other files only ask for:

- `SCHEDULES`, the registry of schedule kinds (`linear`, `polynomial`, `per_position`, `lomdm`): how each turns
  scores into exponents, its smallest exponent, the model modules that hold its learned parameters, its default
  scheduler learning-rate multiplier and the model card's sentence. The config validates against it; adding a
  kind touches this table and its tests.
- The forward noise draw (`sample_noise` draws the random numbers of a training step, `add_noise` turns them into
  times and masks once the forward exponents are known), as diffusers keeps `add_noise` beside `step`.

The objective (`objective.py`), the sampler (`sampler_lomdm.py`) and the tests call these functions;
no other file re-types a formula.

Hub-facing: every `*_lomdm.py` module ships inside saved checkpoints (transformers copies a model file's
single-dot sibling imports for `trust_remote_code`), so this one imports only `torch` and the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

# Uniform draws are clamped away from 0 so that log(u) stays finite (P(u < 1e-300) is 0 in float64).
_U_MIN = 1e-300


def _mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is 1, per row `(B, 1)` (0 for an empty row)."""
    inside = torch.where(mask > 0, values, torch.zeros_like(values))  # what lies outside M never leaks in
    return inside.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)


def normsig(scores: torch.Tensor, noise_mask: torch.Tensor) -> torch.Tensor:
    """NormSig(v)_i = sigmoid(ṽ_i) - mean_{j in M} sigmoid(ṽ_j) with ṽ = v - mean_{j in M} v_j; zero outside `M`.

    LoMDM Eq. 12 with the scores centred first: NormSig of raw scores only sees their differences, so
    nothing holds their common mode; at a high scheduler learning rate it drifted until every sigmoid saturated
    and the exponents froze. Centred, the scores straddle 0 where the sigmoid is steepest.

    Args:
        scores: `(B, L)` raw scheduler outputs `v`.
        noise_mask: `(B, L)` bool, the positions `M` that may be noised; both means run over them only.
    """
    mask = noise_mask.to(torch.float32)
    sig = _centred_sigmoid(scores, mask)  # (B, L)
    return (sig - _mean_over(sig, mask)) * mask


def _centred_sigmoid(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sigmoid(ṽ) with ṽ = v - mean_{j in M} v_j, in float32 `(B, L)`: the inner part of NormSig."""
    scores = scores.float()
    return torch.sigmoid(scores - _mean_over(scores, mask.to(scores.dtype)))


def exponents(scores: torch.Tensor, noise_mask: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """Learned exponents e_i = c1 + c2 * NormSig(v)_i, in (c1 - c2, c1 + c2); equal to c1 outside `M`."""
    return c1 + c2 * normsig(scores, noise_mask)


def saturated(scores: torch.Tensor, noise_mask: torch.Tensor, tol: float = 0.01) -> torch.Tensor:
    """`(B, L)` bool: positions of M whose NormSig sigmoid is within `tol` of 0 or 1 (its gradient has all but
    vanished: sigmoid' < tol). A scheduler with most positions saturated has stopped learning."""
    sig = _centred_sigmoid(scores, noise_mask)
    return ((sig < tol) | (sig > 1 - tol)) & noise_mask


def smallest_exponent(schedule: str, c1: float, c2: float) -> float:
    """Infimum of the exponents a schedule can produce (sets the importance sampler's power `a`)."""
    return SCHEDULES[schedule].smallest_exponent(c1, c2)


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


def log_q_per_token(
    z_is_mask: torch.Tensor, log_t: torch.Tensor, e: torch.Tensor, noise_mask: torch.Tensor
) -> torch.Tensor:
    """log q(z_t^i | x) = [z_t^i = m ? e_i log t : log(1 - t**e_i)] on M, 0 outside, shape of `z_is_mask`.

    The clean branch uses log(-expm1(e log t)); it is evaluated on a dummy value where the token is
    masked so that its infinite derivative at t = 1 cannot leak a NaN into the gradient.
    """
    e_log_t = e * log_t  # (B, L)
    safe = torch.where(z_is_mask, torch.full_like(e_log_t, -1.0), e_log_t)
    per_token = torch.where(z_is_mask, e_log_t, torch.log(-torch.expm1(safe)))
    return per_token * noise_mask.to(per_token.dtype)


def log_q(
    z_is_mask: torch.Tensor, log_t: torch.Tensor, e: torch.Tensor, noise_mask: torch.Tensor
) -> torch.Tensor:
    """log q(z_t | x) = sum_{i in M} log q(z_t^i | x), per sequence `(B,)` (the masks are independent given x)."""
    return log_q_per_token(z_is_mask, log_t, e, noise_mask).sum(-1)


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
    """log q(t) for the defensive mixture q(t) = w + (1 - w) * a * t**(a - 1) on (0, 1]."""
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


# --- The schedule kinds -----------------------------------------------------------------------------------


def _unit_exponents(scores, noise_mask, c1, c2) -> torch.Tensor:
    return torch.ones(noise_mask.shape, device=noise_mask.device)


def _constant_exponents(scores, noise_mask, c1, c2) -> torch.Tensor:
    return torch.full(noise_mask.shape, c1, device=noise_mask.device)


def _learned_exponents(scores, noise_mask, c1, c2) -> torch.Tensor:
    return exponents(scores, noise_mask, c1, c2)


@dataclass(frozen=True)
class ScheduleKind:
    """One schedule kind of the exponent form alpha^i(t) = 1 - t**e_i: everything other files ask about it.

    Args:
        name: the `config.schedule` value.
        exponents: `(scores, noise_mask, c1, c2) -> (B, L)` exponents; `scores` is None for the fixed kinds.
        smallest_exponent: `(c1, c2) ->` the infimum of the exponents the kind can produce.
        scores: where the raw scores come from: `none` (fixed exponents), `position` (one learned score per
            position, the same for every input) or `features` (a network on the backbone's features: state
            dependent, so the forward exponents need a backbone pass on the clean input).
        learned_modules: attribute names of the modules of `LoMDMForMaskedDiffusion` that hold the learned
            schedule (the trainer's scheduler parameter group, LoRA's `modules_to_save`, the model card).
        scheduler_lr_multiplier: default scheduler learning rate as a multiple of the backbone's.
        description: the model card's sentence.
        uses_c1_c2: whether `c1` / `c2` enter the exponents (the model card lists them then).
    """

    name: str
    exponents: Callable[..., torch.Tensor]
    smallest_exponent: Callable[[float, float], float]
    scores: Literal["none", "position", "features"]
    learned_modules: tuple[str, ...]
    scheduler_lr_multiplier: float
    description: str
    uses_c1_c2: bool = True


# Scheduler learning-rate multipliers (measured on the order tasks, `benchmarks/order_tasks.py`; docs/results.md,
# "Synthetic tasks"). `per_position` has one score per position: Adam moves each by about the learning rate per step,
# so at the backbone's rate its exponents barely move in a few hundred steps (contrast 0.006 at 1x, 0.064 at 10x, 0.14
# at 25x, 300 steps). `lomdm`'s scores come out of a network in which every weight moves by that much: at 10-25x they
# thrash from step to step and learn no order (contrast 0.000), at 1x they learn it.
SCHEDULES: dict[str, ScheduleKind] = {
    kind.name: kind
    for kind in (
        ScheduleKind(
            name="linear",
            exponents=_unit_exponents,
            smallest_exponent=lambda c1, c2: 1.0,
            scores="none",
            learned_modules=(),
            scheduler_lr_multiplier=1.0,
            description="MDLM's log-linear schedule, every token e = 1",
            uses_c1_c2=False,
        ),
        ScheduleKind(
            name="polynomial",
            exponents=_constant_exponents,
            smallest_exponent=lambda c1, c2: c1,
            scores="none",
            learned_modules=(),
            scheduler_lr_multiplier=1.0,
            description="a fixed polynomial schedule α = 1 − t^c1",
        ),
        ScheduleKind(
            name="per_position",
            exponents=_learned_exponents,
            smallest_exponent=lambda c1, c2: c1 - c2,
            scores="position",
            learned_modules=("position_scores",),
            scheduler_lr_multiplier=25.0,
            description="MDM(LS): one learned exponent per position, e = c1 + c2·NormSig(θ)",
        ),
        ScheduleKind(
            name="lomdm",
            exponents=_learned_exponents,
            smallest_exponent=lambda c1, c2: c1 - c2,
            scores="features",
            learned_modules=("forward_scheduler", "reverse_scheduler"),
            scheduler_lr_multiplier=1.0,
            description=(
                "LoMDM: state-dependent learned exponents e = c1 + c2·NormSig(g(f(x))), reverse scheduler at "
                "inference"
            ),
        ),
    )
}

# Every module name that may hold a learned schedule, over all kinds (in declaration order).
SCHEDULER_MODULE_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(name for kind in SCHEDULES.values() for name in kind.learned_modules)
)


# --- The forward noise draw -------------------------------------------------------------------------------

TimeSampling = Literal["importance", "uniform_eps"]
# Weight of the uniform part of the importance mixture q(t) of the times: the default everywhere.
TIME_UNIFORM_WEIGHT = 0.5


@dataclass(frozen=True)
class NoiseSpec:
    """The random numbers of one training step and the rule that turns them into times (`sample_noise`).

    Drawn before the model runs, since the times depend on the forward exponents the model computes; the model
    hands this to `add_noise` and returns the `NoiseDraw` on its output.

    Args:
        mask_uniforms: `(K, B, L)` uniforms; z^k_i = m iff `mask_uniforms[k, b, i] < t_b**e_i`.
        time_uniforms: `(B,)` float64 antithetic uniforms of the times, None when `given_log_t` is set.
        given_log_t: `(B,)` float64 log of the caller's times, or None.
        time_sampling: `importance` (the mixture q(t), an unbiased bound) or `uniform_eps` (MDLM's U(eps, 1)).
        uniform_weight: weight of the uniform part of the mixture q(t).
        eps: lower time limit of `uniform_eps`.
        floor: the mixture power used for a row with an empty M.
    """

    mask_uniforms: torch.Tensor
    time_uniforms: torch.Tensor | None
    given_log_t: torch.Tensor | None
    time_sampling: TimeSampling
    uniform_weight: float
    eps: float
    floor: float


@dataclass(frozen=True)
class NoiseDraw:
    """What the forward process drew for one training step (`add_noise`).

    Args:
        log_t: `(B,)` float64 log-times (exact where t itself underflows).
        log_weight: `(B,)` float64 log of the row's factor 1 / (t q(t)) (importance sampling) or 1 / t (a given t
            or `uniform_eps`): the per-sample loss is S(x, z) times this factor.
        is_mask: `(K, B, L)` bool, z^k_i = m (only inside M).
    """

    log_t: torch.Tensor
    log_weight: torch.Tensor
    is_mask: torch.Tensor

    @property
    def t(self) -> torch.Tensor:
        """`(B,)` float64 times (may underflow to 0 for the smallest importance samples; see `log_t`)."""
        return torch.exp(self.log_t)


def sample_noise(
    batch: int,
    length: int,
    *,
    num_samples: int,
    t: torch.Tensor | None = None,
    time_sampling: TimeSampling = "importance",
    uniform_weight: float = TIME_UNIFORM_WEIGHT,
    eps: float = 1e-3,
    floor: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> NoiseSpec:
    """Draw the random numbers of a training step: u_0 `(1,)` for the antithetic times (unless `t` is given),
    then the mask uniforms `(K, B, L)`, in that order from `generator`.

    The antithetic times u_b = (u_0 + b / B) mod 1 cover [0, 1) evenly within the batch.

    Args:
        batch, length: B and L.
        num_samples: K noise samples per row.
        t: optional `(B,)` times in (0, 1] (ValueError otherwise); no importance weight is applied then.
        time_sampling, uniform_weight, eps, floor: see `NoiseSpec`.
        generator: optional `torch.Generator`; draws happen on its device.
        device: where the returned tensors live.
    """
    given_log_t = None
    if t is not None:
        t = torch.as_tensor(t, dtype=torch.float64, device=device)
        if t.shape != (batch,) or bool(((t <= 0) | (t > 1)).any()):
            raise ValueError(f"`t` must be a ({batch},) tensor with values in (0, 1], got {t}.")
        given_log_t = t.log()
    draw_device = generator.device if generator is not None else device
    time_uniforms = None
    if t is None:
        u0 = torch.rand(1, generator=generator, dtype=torch.float64, device=draw_device).to(device)
        time_uniforms = (u0 + torch.arange(batch, dtype=torch.float64, device=device) / batch) % 1.0
    mask_uniforms = torch.rand((num_samples, batch, length), generator=generator, device=draw_device).to(
        device
    )
    return NoiseSpec(mask_uniforms, time_uniforms, given_log_t, time_sampling, uniform_weight, eps, floor)


def _log_times(
    spec: NoiseSpec, e: torch.Tensor, noise_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log t, log of the per-row factor 1 / (t q(t)) or 1 / t), both float64 `(B,)`."""
    if spec.given_log_t is not None:
        return spec.given_log_t, -spec.given_log_t  # the integrand at the given t: no importance weight
    if spec.time_sampling == "uniform_eps":
        # MDLM's rule: t ~ U(eps, 1), weight 1. Drops [0, eps): NOT a bound for learned exponents.
        log_t = torch.log(spec.eps + (1.0 - spec.eps) * spec.time_uniforms)
        return log_t, -log_t
    a = mixture_power(e, noise_mask, spec.floor)
    log_t = sample_log_times(spec.time_uniforms, a, spec.uniform_weight)
    return log_t, -log_t - log_time_density(log_t, a, spec.uniform_weight)


def add_noise(spec: NoiseSpec, e: torch.Tensor, noise_mask: torch.Tensor) -> NoiseDraw:
    """The forward process q(z_t | x): one time per row (importance-sampled from the mixture q(t) with power
    a = (min_{i in M} e_i) / 2, MDLM's U(eps, 1), or the given t), then K samples with P(z_t^i = m) = t**e_i on M.

    Args:
        spec: the random numbers (`sample_noise`).
        e: `(B, L)` detached forward exponents of the clean rows.
        noise_mask: `(B, L)` bool, the set M.
    """
    log_t, log_weight = _log_times(spec, e, noise_mask)
    p_mask = mask_prob(log_t.float()[:, None], e)  # (B, L)
    return NoiseDraw(log_t=log_t, log_weight=log_weight, is_mask=(spec.mask_uniforms < p_mask) & noise_mask)


__all__ = [
    "SCHEDULER_MODULE_NAMES",
    "SCHEDULES",
    "TIME_UNIFORM_WEIGHT",
    "NoiseDraw",
    "NoiseSpec",
    "ScheduleKind",
    "TimeSampling",
    "add_noise",
    "alpha",
    "exponents",
    "log_q",
    "log_q_per_token",
    "log_time_density",
    "log_velocity",
    "mask_prob",
    "mixture_power",
    "normsig",
    "reveal_log_time",
    "sample_log_times",
    "sample_noise",
    "saturated",
    "smallest_exponent",
    "unmask_prob",
    "velocity",
    "velocity_matching",
]
