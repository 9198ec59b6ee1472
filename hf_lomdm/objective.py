"""The velocity-matched NELBO of LoMDM and its gradient estimators (LoMDM Eq. 10-11).

Per-sample loss at one time t and one noisy sample z_t ~ q(. | x):

    L(x, z_t, t) = sum_{i in M, z_t^i = m} [ -A^i log p_θ^i(x^i | z_t)                      (L_main)
                                            + A^i (log A^i - log Â^i) - (A^i - Â^i) ]      (L_velocity)

with A^i = e_i / t and Â^i = ê_i / t, so L = (1/t) * S(x, z_t) with S free of t. The time integral over
(0, 1] is estimated by importance sampling from the mixture q(t) of `schedule_lomdm.sample_log_times`;
each row then carries the factor 1 / (t q(t)), computed in log space so that tiny times stay exact.

Gradient estimators. The forward exponents e (parameters φ) enter both the loss and the distribution of z_t, so
for one row at time t with weight w = 1 / (t q(t)) and L = w Σ_j m_j e_j ℓ_j (m_j = [z_j = m],
ℓ_j = -log p_θ(x_j | z) + L_velocity,j / e_j the loss per unit exponent),

    ∂_{e_i} E[L] = E[ w m_i ∂_{e_i}(e_i ℓ_i) ]  (pathwise)  +  E[ s_i L ]  (score function),
    s_i = ∂_{e_i} log q(z_i | x) = log t if masked, -t^{e_i} log t / (1 - t^{e_i}) if not.

`plain` keeps the pathwise part only (MDLM's estimator; biased for learned exponents). The others estimate the
score part without bias, with K samples z^1..z^K at the same t:

- `rloo`: (1/K) Σ_k log q(z^k | x) sg(L_k - mean_{j≠k} L_j), the leave-one-out baseline (needs K >= 2).
- `ptcv` (per-token baseline): the masks are independent Bernoullis given x, so E[s_i b_i] = 0 for any b_i that
  does not depend on z_i. Token i's score takes the baseline b_i = w Σ_{j≠i} m_j e_j c_j, with c_j a per-token
  estimate of ℓ_j that ignores z_i (other samples' ℓ_j where j is masked there, else the token baseline c[x_j]):
  Σ_i log q(z_i | x) sg(D + w m_i e_i c_i), D = w Σ_j m_j e_j (ℓ_j - c_j). Unbiased at every t.
- `tcv` (token control variate): with a z-free, t-free c_j = c[x_j], E[s_i L] = E[s_i D] + w e_i c_i ∂_e t^{e_i}
  (the only term of w Σ_j m_j e_j c_j that depends on z_i is j = i, and E[s_i m_i] = ∂_e t^{e_i}). Moving w m_i c_i
  from the pathwise part to its mean w t^{e_i} c_i as well leaves w c_i ∂_e(e_i t^{e_i}), whose mean over t is 0
  for every proposal q: ∫_0^1 (1/t) ∂_e(e t^e) dt = ∂_e ∫_0^1 e t^{e-1} dt = ∂_e 1 = 0. So the surrogate is
  Σ_i [log q(z_i | x) sg(D) - w m_i e_i sg(c_i)] (unbiased over (t, z); at a caller-given t the dropped term is
  added back, so it is unbiased for that t's integrand). It is exactly 0 when the denoiser ignores context and
  c = ℓ, as the true gradient then is; it works with K = 1 (one noisy pass).

The token baseline c is a `(V,)` table of per-token-id losses per unit exponent: a running mean kept by the
trainer (`update_token_baseline`) from past steps, which is z-free for the current one; without it, every
token gets log V (a uniform denoiser's loss). Each score part is written as `(f - sg(f)) · weight`: it has value
0, so `loss` equals the NELBO estimate per token and only its gradient carries the estimator.

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
    log_q_per_token,
    mask_prob,
    sample_noise,
    smallest_exponent,
    velocity_matching,
)

Estimator = Literal["rloo", "plain", "ptcv", "tcv"]


@dataclass
class LoMDMLossOutput:
    """Result of `lomdm_loss`.

    Args:
        loss: scalar surrogate to backpropagate: sum over the batch of the per-sequence surrogate divided
            by the total number of noisable tokens (per-token scale). Its value is the NELBO estimate; its
            gradient includes the estimator's score-function part.
        nelbo: `(B,)` detached per-sequence NELBO estimate (sum over M, mean over the K samples).
        loss_main, loss_velocity: `(B,)` the L_main and L_velocity parts of `nelbo`.
        num_tokens: `(B,)` |M| per sequence.
        t: `(B,)` the times used (may underflow to 0 for the smallest importance samples; see `log_t`).
        log_t: `(B,)` float64 log-times.
        forward_exponents: `(B, L)` detached e (values outside M are not meaningful).
        noise_mask: `(B, L)` bool, the set M.
        confidence: `(B, L)` detached p_θ(x^i | z^1) of the first sample at its masked positions, NaN elsewhere.
        forward_scores: `(B, L)` detached raw scores v of the forward scheduler (None for fixed schedules).
        targets: `(B, L)` the clean target tokens x.
        is_mask: `(K, B, L)` bool, the masked positions of the K samples.
        token_loss: `(K, B, L)` detached loss per unit exponent ℓ_i = -log p_θ(x_i | z^k) + L_velocity,i / e_i at
            the masked positions, 0 elsewhere (what `update_token_baseline` averages).
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
    targets: torch.Tensor | None = None
    is_mask: torch.Tensor | None = None
    token_loss: torch.Tensor | None = None


def check_estimator_arguments(
    num_samples: int, estimator: str, time_sampling: str, *, num_samples_name: str = "num_samples"
) -> None:
    """Raise a `ValueError` naming the value for fewer than one noise sample, an unknown `estimator` or
    `time_sampling`, or RLOO with one sample (its leave-one-out baseline needs two).

    Args:
        num_samples: K, noise samples per sequence.
        estimator: `rloo`, `plain`, `ptcv` or `tcv` (see the module docstring).
        time_sampling: `importance` or `uniform_eps`.
        num_samples_name: the name the caller gives K (`num_noise_samples` in the training arguments).
    """
    if num_samples < 1:
        raise ValueError(f"`{num_samples_name}` must be >= 1, got {num_samples}.")
    if estimator not in get_args(Estimator):
        raise ValueError(f"`estimator` must be one of {get_args(Estimator)}, got {estimator!r}.")
    if estimator == "rloo" and num_samples < 2:
        raise ValueError(
            f"the RLOO estimator needs `{num_samples_name}` >= 2, got {num_samples}; "
            "use estimator='tcv' (or 'plain', without a score-function term) for K = 1."
        )
    if time_sampling not in get_args(TimeSampling):
        raise ValueError(f"`time_sampling` must be 'importance' or 'uniform_eps', got {time_sampling!r}.")


def targets_and_noise_mask(
    input_ids, attention_mask, labels, mask_token_id
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets x and the set M = attention_mask & (labels != -100) of the objective; validates both (ValueError for a
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
    token_baseline: torch.Tensor | None = None,
) -> LoMDMLossOutput:
    """Velocity-matched NELBO of LoMDM with a score-function gradient estimator for the learned exponents.

    Steps (keep in sync with the body):
        1. M = attention_mask & (labels != -100); the random numbers of the step (`schedule_lomdm.sample_noise`).
        2. One model call (`model(x, noise=spec)`, which returns what it drew as `noise_draw`): forward exponents e
           of x; one time per row, importance-sampled (antithetic) from the mixture q(t) with power
           a = (min_i e_i of the row) / 2, MDLM's U(eps, 1)
           (`uniform_eps`, not a bound), or the given `t` (no weight: `nelbo` is then the integrand); K noisy
           samples z^k masked with probability t**e_i on M; the denoiser on all K: log p_θ(x | z^k) at the masked
           positions and ê(z^k).
        3. L_k = L_main + L_velocity, weighted by 1/(t q(t)); log q(z^k | x).
        4. surrogate = mean_k L_k + the estimator's score-function part (`rloo`, `ptcv`, `tcv`: module docstring,
           value 0), or mean_k L_k alone (`plain`, the MDLM estimator).

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
        estimator: `rloo`, `plain`, `ptcv` or `tcv` (module docstring).
        time_sampling: `importance` (an unbiased bound) or `uniform_eps` (MDLM's ε-truncated rule).
        uniform_weight: weight of the uniform part of the time mixture (½ by default).
        eps: lower time limit of `uniform_eps`.
        generator: optional `torch.Generator` for reproducibility.
        allowed_tokens: optional bool `(L, V)` / `(B, L, V)`: the tokens each position may take; the denoiser's
            softmax runs over them only (see `LoMDMForMaskedDiffusion.forward`), so the NELBO is over that set.
        token_baseline: optional `(V,)` per-token-id loss per unit exponent c for `ptcv` / `tcv`, computed without
            this step's masks (`update_token_baseline`); log V for every token when None.
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
    velocity_terms = velocity_matching(e, e_hat)  # (K, B, L)
    loss_main = (e * -log_p * weight).sum(-1) * factor
    loss_velocity = (velocity_terms * weight).sum(-1) * factor
    per_sample = loss_main + loss_velocity  # (K, B)
    token_loss = ((-log_p + velocity_terms / e) * weight).detach()  # ℓ_i per unit exponent, (K, B, L)

    # 4. Surrogate: the pathwise part plus the estimator's score-function part (value 0, see the module docstring).
    surrogate = per_sample.mean(0)
    if estimator != "plain" and e.requires_grad:  # fixed or frozen exponents: no score function to estimate
        log_t = draw.log_t.float()[:, None]  # (B, 1)
        log_q_tokens = log_q_per_token(is_mask, log_t, e, noise_mask)  # (K, B, L)
        if estimator == "rloo":
            surrogate = surrogate + _rloo_term(log_q_tokens.sum(-1), per_sample.detach())
        else:
            baseline = _token_baseline_values(token_baseline, targets, config.vocab_size)  # (B, L)
            surrogate = surrogate + _token_baseline_term(
                estimator,
                log_q_tokens,
                e,
                is_mask,
                token_loss,
                factor,
                baseline,
                log_t,
                noise_mask,
                t is not None,
            )

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
        targets=targets,
        is_mask=is_mask,
        token_loss=token_loss,
    )


def _zero_valued(value: torch.Tensor) -> torch.Tensor:
    """`value - sg(value)`: 0 in the forward pass, the gradient of `value` in the backward pass."""
    return value - value.detach()


def _rloo_term(log_q_samples: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """`rloo`: (1/K) Σ_k log q(z^k | x) · sg(L_k - mean_{j≠k} L_j), `(B,)`; `log_q_samples`, `losses`: `(K, B)`."""
    num_samples = losses.shape[0]
    leave_one_out = (losses.sum(0, keepdim=True) - losses) / (num_samples - 1)
    return (_zero_valued(log_q_samples) * (losses - leave_one_out)).mean(0)


def _token_baseline_values(token_baseline: torch.Tensor | None, targets: torch.Tensor, vocab_size: int):
    """c[x_i] `(B, L)`: the token baseline table at the targets, or log V for every token without one."""
    if token_baseline is None:
        return torch.full(targets.shape, math.log(vocab_size), device=targets.device)
    if token_baseline.shape != (vocab_size,):
        raise ValueError(
            f"`token_baseline` must have shape ({vocab_size},), got {tuple(token_baseline.shape)}."
        )
    return token_baseline.to(targets.device).float()[targets]


def _token_baseline_term(
    estimator, log_q_tokens, e, is_mask, token_loss, factor, baseline, log_t, noise_mask, given_t: bool
) -> torch.Tensor:
    """The score-function part of `ptcv` / `tcv` per row `(B,)` (module docstring; keep the two in sync).

    `log_q_tokens`, `is_mask`, `token_loss`: `(K, B, L)`; `e`, `baseline`, `noise_mask`: `(B, L)`; `factor`: `(B,)`
    = w; `log_t`: `(B, 1)`.
    """
    weight, w = is_mask.float(), factor[:, None]
    c = baseline.expand_as(token_loss)  # (K, B, L)
    num_samples = is_mask.shape[0]
    if estimator == "ptcv" and num_samples > 1:
        # c^k_j: the mean ℓ_j of the other samples where j is masked there (independent of z^k), else c[x_j].
        others = token_loss.sum(0, keepdim=True) - token_loss
        count = weight.sum(0, keepdim=True) - weight
        c = torch.where(count > 0, others / count.clamp(min=1), c)
    e_fixed = e.detach()
    residual = (w * weight * e_fixed * (token_loss - c)).sum(-1, keepdim=True)  # D: (K, B, 1)
    scores = _zero_valued(log_q_tokens)
    if estimator == "ptcv":  # token i's weight is L - b_i = D + w m_i e_i c_i
        return (scores * (residual + w * weight * e_fixed * c)).sum(-1).mean(0)
    # tcv: the score part against D, and w m_i c_i moved from the pathwise part to its mean.
    term = (scores * residual).sum(-1) - (w * weight * _zero_valued(e) * c).sum(-1)
    if given_t:  # at a fixed t the moved term does not average out: add w c_i ∂_e(e_i t^{e_i}) back
        constant = w * _zero_valued(e * mask_prob(log_t, e)) * c[0] * noise_mask.float()
        term = term + constant.sum(-1)[None]
    return term.mean(0)


def update_token_baseline(token_baseline: torch.Tensor, res: LoMDMLossOutput, decay: float) -> torch.Tensor:
    """The next token baseline of `ptcv` / `tcv`: per token id, an exponential moving average of ℓ over this
    batch's masked positions (`res.token_loss`); ids absent from the batch keep their value.

    Used at the next step, the table does not depend on that step's masks, as the estimators need.

    Args:
        token_baseline: `(V,)` the current table.
        res: the `lomdm_loss` result of the step.
        decay: the EMA decay in [0, 1).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"`decay` must be in [0, 1), got {decay}.")
    ids = res.targets.expand_as(res.is_mask)[res.is_mask]  # (N,)
    sums = torch.zeros_like(token_baseline, dtype=torch.float64).index_add_(
        0, ids, res.token_loss[res.is_mask].double()
    )
    counts = torch.zeros_like(sums).index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
    batch_mean = (sums / counts.clamp(min=1)).to(token_baseline.dtype)
    return torch.where(counts > 0, decay * token_baseline + (1 - decay) * batch_mean, token_baseline)


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
    "update_token_baseline",
    "lomdm_loss",
    "stratified_nelbo",
    "targets_and_noise_mask",
]
