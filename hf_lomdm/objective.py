"""The velocity-matched NELBO of LoMDM and its RLOO gradient estimator (SPEC §1, LoMDM Eq. 10-11).

Per-sample loss at one time t and one noisy sample z_t ~ q(. | x):

    L(x, z_t, t) = sum_{i in M, z_t^i = m} [ -A^i log p_θ^i(x^i | z_t)                      (L_main)
                                            + A^i (log A^i - log Â^i) - (A^i - Â^i) ]      (L_velocity)

with A^i = e_i / t and Â^i = ê_i / t, so L = (1/t) * S(x, z_t) with S free of t. The time integral over
(0, 1] is estimated by importance sampling from the mixture q(t) of `schedule_lomdm.sample_log_times`;
each row then carries the factor 1 / (t q(t)), computed in log space so that tiny times stay exact.

Shapes: B = batch, L = length, V = vocabulary, K = noise samples per sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .schedule_lomdm import (
    TIME_UNIFORM_WEIGHT,
    TimeSampling,
    log_q,
    sample_noise,
    smallest_exponent,
    velocity_matching,
)

Estimator = Literal["rloo", "plain"]


@dataclass
class LoMDMLossOutput:
    """Result of `lomdm_loss`.

    Args:
        loss: scalar surrogate to backpropagate: sum over the batch of the per-sequence surrogate divided
            by the total number of noisable tokens (per-token scale). Includes the RLOO term.
        nelbo: `(B,)` detached per-sequence NELBO estimate (sum over M, mean over the K samples).
        loss_main, loss_velocity: `(B,)` the L_main and L_velocity parts of `nelbo`.
        num_tokens: `(B,)` |M| per sequence.
        t: `(B,)` the times used (may underflow to 0 for the smallest importance samples; see `log_t`).
        log_t: `(B,)` float64 log-times.
        forward_exponents: `(B, L)` detached e (values outside M are not meaningful).
        noise_mask: `(B, L)` bool, the set M.
        confidence: `(B, L)` detached p_θ(x^i | z^1) of the first sample at its masked positions, NaN elsewhere.
        forward_scores: `(B, L)` detached raw scores v of the forward scheduler (None for fixed schedules).
    """

    loss: torch.Tensor
    nelbo: torch.Tensor
    loss_main: torch.Tensor
    loss_velocity: torch.Tensor
    num_tokens: torch.Tensor
    t: torch.Tensor
    log_t: torch.Tensor
    forward_exponents: torch.Tensor
    noise_mask: torch.Tensor
    confidence: torch.Tensor
    forward_scores: torch.Tensor | None = None


def check_estimator_arguments(
    num_samples: int, estimator: str, time_sampling: str, *, num_samples_name: str = "num_samples"
) -> None:
    """Raise a `ValueError` naming the value for fewer than one noise sample, an unknown `estimator` or
    `time_sampling`, or RLOO with one sample (its leave-one-out baseline needs two).

    Args:
        num_samples: K, noise samples per sequence.
        estimator: `rloo` or `plain`.
        time_sampling: `importance` or `uniform_eps`.
        num_samples_name: the name the caller gives K (`num_noise_samples` in the training arguments).
    """
    if num_samples < 1:
        raise ValueError(f"`{num_samples_name}` must be >= 1, got {num_samples}.")
    if estimator not in get_args(Estimator):
        raise ValueError(f"`estimator` must be 'rloo' or 'plain', got {estimator!r}.")
    if estimator == "rloo" and num_samples < 2:
        raise ValueError(
            f"the RLOO estimator needs `{num_samples_name}` >= 2, got {num_samples}; "
            "use estimator='plain' for K = 1."
        )
    if time_sampling not in get_args(TimeSampling):
        raise ValueError(f"`time_sampling` must be 'importance' or 'uniform_eps', got {time_sampling!r}.")


def targets_and_noise_mask(
    input_ids, attention_mask, labels, mask_token_id
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets x and the set M = attention_mask & (labels != -100) of SPEC §1; validates both (ValueError for a
    labels shape mismatch or the mask token among the targets)."""
    noise_mask = (
        torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    )
    targets = input_ids
    if labels is not None:
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                f"got {tuple(labels.shape)}."
            )
        if bool((labels == mask_token_id).any()):
            raise ValueError(
                f"`labels` contain the mask token id {mask_token_id}; the mask token is never a target."
            )
        noise_mask = noise_mask & (labels != -100)
        targets = torch.where(labels == -100, input_ids, labels)
    if bool((targets[noise_mask] == mask_token_id).any()):
        raise ValueError(
            f"the clean `input_ids` contain the mask token id {mask_token_id} at noisable positions."
        )
    return targets, noise_mask


def lomdm_loss(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.LongTensor | None = None,
    t: torch.Tensor | None = None,
    *,
    num_samples: int = 2,
    estimator: Estimator = "rloo",
    time_sampling: TimeSampling = "importance",
    uniform_weight: float = TIME_UNIFORM_WEIGHT,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    allowed_tokens: torch.Tensor | None = None,
) -> LoMDMLossOutput:
    """Velocity-matched NELBO of LoMDM with the RLOO gradient estimator.

    Steps (keep in sync with the body):
        1. M = attention_mask & (labels != -100); the random numbers of the step (`schedule_lomdm.sample_noise`).
        2. One model call (`model(x, noise=spec)`, which returns what it drew as `noise_draw`): forward exponents e
           of x; one time per row, importance-sampled
           (antithetic) from the mixture q(t) with power a = (min_i e_i of the row) / 2, MDLM's U(eps, 1)
           (`uniform_eps`, not a bound), or the given `t` (no weight: `nelbo` is then the integrand); K noisy
           samples z^k masked with probability t**e_i on M; the denoiser on all K: log p_θ(x | z^k) at the masked
           positions and ê(z^k).
        3. L_k = L_main + L_velocity, weighted by 1/(t q(t)); log q(z^k | x).
        4. surrogate = mean_k L_k + mean_k log q(z^k|x) * sg(L_k - mean_{j != k} L_j)  (RLOO), or mean_k L_k
           (`plain`, the MDLM estimator).

    Random numbers are drawn from `generator` in this order: u_0 `(1,)` (only when `t` is None), then the
    mask uniforms `(K, B, L)`.

    Args:
        model: a `LoMDMForMaskedDiffusion`, or any wrapper whose forward passes keyword arguments on (PEFT, DDP,
            FSDP): the whole step is one call of it.
        input_ids: `(B, L)` clean tokens x.
        attention_mask: `(B, L)` 1 for real tokens; all ones if None.
        labels: `(B, L)` targets; positions with -100 are never noised and do not count. Elsewhere the
            label is the target token (normally equal to `input_ids`).
        t: optional `(B,)` times in (0, 1].
        num_samples: K >= 1 noise samples per sequence (RLOO needs K >= 2).
        estimator: `rloo` or `plain`.
        time_sampling: `importance` (an unbiased bound) or `uniform_eps` (MDLM's ε-truncated rule).
        uniform_weight: weight of the uniform part of the time mixture (SPEC §1: ½).
        eps: lower time limit of `uniform_eps`.
        generator: optional `torch.Generator` for reproducibility.
        allowed_tokens: optional bool `(L, V)` / `(B, L, V)`: the tokens each position may take; the denoiser's
            softmax runs over them only (see `LoMDMForMaskedDiffusion.forward`), so the NELBO is over that set.
    """
    check_estimator_arguments(num_samples, estimator, time_sampling)
    config = _unwrap(model).config
    mask_id = config.mask_token_id

    # 1. The set M and the random numbers.
    targets, noise_mask = targets_and_noise_mask(input_ids, attention_mask, labels, mask_id)
    batch, length = targets.shape
    noise = sample_noise(
        batch,
        length,
        num_samples=num_samples,
        t=t,
        time_sampling=time_sampling,
        uniform_weight=uniform_weight,
        eps=eps,
        floor=smallest_exponent(config.schedule, config.c1, config.c2) / 2,
        generator=generator,
        device=targets.device,
    )

    # 2. One model call: e(x), the K noisy samples, log p_θ at their masked positions (packed) and ê.
    out = model(
        targets,
        attention_mask=attention_mask,
        noise_mask=noise_mask,
        noise=noise,
        allowed_tokens=allowed_tokens,
    )
    e = out.forward_exponents.float()  # (B, L), carries φ's gradient
    draw = out.noise_draw
    is_mask = draw.is_mask  # (K, B, L)
    packed = out.packed_log_probs.gather(-1, targets.expand(num_samples, -1, -1)[is_mask][:, None]).squeeze(
        -1
    )  # (N,)
    log_p = torch.zeros(is_mask.shape, dtype=packed.dtype, device=packed.device).masked_scatter(
        is_mask, packed
    )
    e_hat = out.reverse_exponents.float().view(num_samples, batch, length)

    # 3. Per-sample losses (K, B): sum over masked positions of A^i (-log p) + velocity matching, times 1/(t q(t)).
    factor = torch.exp(draw.log_weight).float()  # (B,): finite even when t underflows
    weight = is_mask.float()
    loss_main = (e * -log_p * weight).sum(-1) * factor
    loss_velocity = (velocity_matching(e, e_hat) * weight).sum(-1) * factor
    per_sample = loss_main + loss_velocity  # (K, B)

    # 4. Surrogate: the pathwise part plus (RLOO) the score-function part with a leave-one-out baseline.
    surrogate = per_sample.mean(0)
    if estimator == "rloo":
        score_functions = log_q(is_mask, draw.log_t.float()[:, None], e, noise_mask)  # (K, B)
        detached = per_sample.detach()
        baseline = (detached.sum(0, keepdim=True) - detached) / (num_samples - 1)
        surrogate = surrogate + (score_functions * (detached - baseline)).mean(0)

    num_tokens = noise_mask.sum(-1)
    forward_scores = out.forward_scores
    return LoMDMLossOutput(
        loss=surrogate.sum() / num_tokens.sum().clamp(min=1),
        nelbo=per_sample.detach().mean(0),
        loss_main=loss_main.detach().mean(0),
        loss_velocity=loss_velocity.detach().mean(0),
        num_tokens=num_tokens,
        t=draw.t,
        log_t=draw.log_t,
        forward_exponents=e.detach(),
        forward_scores=None if forward_scores is None else forward_scores.detach(),
        noise_mask=noise_mask,
        confidence=torch.where(is_mask[0], log_p[0].detach().exp(), torch.full_like(log_p[0], math.nan)),
    )


def _unwrap(model):
    """The model under DDP-style wrappers (`.module`); PEFT and FSDP2 models expose `.config` themselves."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model


@dataclass
class NelboSamples:
    """Result of `stratified_nelbo`: R NELBO samples per sequence at stratified times.

    Args:
        nelbo: `(R, B)` detached per-sequence NELBO, time sample r of sequence b at `[r, b]`.
        loss_main, loss_velocity: `(R, B)` its L_main and L_velocity parts.
        num_tokens: `(B,)` |M| per sequence.
    """

    nelbo: torch.Tensor
    loss_main: torch.Tensor
    loss_velocity: torch.Tensor
    num_tokens: torch.Tensor


@torch.no_grad()
def stratified_nelbo(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.LongTensor | None = None,
    *,
    time_samples: int,
    time_sampling: TimeSampling = "importance",
    uniform_weight: float = TIME_UNIFORM_WEIGHT,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    allowed_tokens: torch.Tensor | None = None,
) -> NelboSamples:
    """NELBO of each sequence at `time_samples` = R stratified times (one noise sample each, no gradient).

    The batch is tiled R times: row r * B + b is time sample r of sequence b, so the antithetic draws of
    `lomdm_loss` (u_j = u_0 + j / (R B) mod 1) give every sequence R points spaced 1/R apart, a stratified
    estimate of its time integral. The same random numbers as one `lomdm_loss` call on the tiled batch.

    Args:
        model, input_ids, attention_mask, labels: as for `lomdm_loss`, `(B, L)`.
        time_samples: R >= 1 times per sequence.
        time_sampling, uniform_weight, eps, generator, allowed_tokens: as for `lomdm_loss`.
    """
    batch = input_ids.shape[0]

    def tile(tensor):
        return (
            None if tensor is None else tensor.repeat(time_samples, *[1] * (tensor.dim() - 1))
        )  # (R B, ...)

    res = lomdm_loss(
        model,
        tile(input_ids),
        tile(attention_mask),
        tile(labels),
        num_samples=1,
        estimator="plain",
        time_sampling=time_sampling,
        uniform_weight=uniform_weight,
        eps=eps,
        generator=generator,
        allowed_tokens=allowed_tokens
        if allowed_tokens is None or allowed_tokens.dim() == 2
        else tile(allowed_tokens),
    )
    return NelboSamples(
        nelbo=res.nelbo.view(time_samples, batch),
        loss_main=res.loss_main.view(time_samples, batch),
        loss_velocity=res.loss_velocity.view(time_samples, batch),
        num_tokens=res.num_tokens[:batch],
    )


__all__ = [
    "TIME_UNIFORM_WEIGHT",
    "LoMDMLossOutput",
    "NelboSamples",
    "check_estimator_arguments",
    "lomdm_loss",
    "stratified_nelbo",
    "targets_and_noise_mask",
]
