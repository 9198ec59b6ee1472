"""The objective against exact enumeration, an independent MDLM loss and Prop. 3.1 of arXiv 2511.19152.

The reference quantities are written out in this file from the definition (docs/objective.md), not from
objective.py:
    S(x, z) = t * L(x, z_t, t) = sum_{i masked} [ e_i (-log p_i) + e_i log(e_i / ê_i) - (e_i - ê_i) ],
    E_z[L] at fixed t = sum_z q(z | x, t) S(x, z) / t,   q(z | x, t) = prod_i (t^e_i if masked else 1 - t^e_i).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import MASK_ID, tiny_model

from hf_lomdm import schedule_lomdm as S
from hf_lomdm.objective import lomdm_loss, update_token_baseline

SCHEDULES = ["linear", "polynomial", "per_position", "lomdm"]


def all_masks(length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([False, True], repeat=length)))  # (2^L, L)


def reference_terms(model, x: torch.Tensor, masks: torch.Tensor):
    """e (L,), and for every mask: S(x, z) (2^L,), using the model only for log p, e and ê."""
    e = model.forward_exponents(x[None])[0].double()
    z = torch.where(masks, torch.full_like(masks, MASK_ID, dtype=torch.long), x)
    out = model(z)
    log_p = out.logits.gather(-1, x.expand_as(z)[..., None]).squeeze(-1).double()
    e_hat = out.reverse_exponents.double()
    per_token = e * -log_p + e * (e.log() - e_hat.log()) - (e - e_hat)
    return e, torch.where(masks, per_token, torch.zeros_like(per_token)).sum(-1)


def exact_integrand(model, x: torch.Tensor, t: float) -> torch.Tensor:
    masks = all_masks(x.numel())
    e, s = reference_terms(model, x, masks)
    p_mask = t**e
    q = torch.where(masks, p_mask, 1 - p_mask).prod(-1)
    return (q * s).sum() / t


# `shift` (a model converted from a causal LM, with grouped-query attention) is a different denoiser, the same maths.
@pytest.mark.parametrize(("schedule", "shift"), [(s, False) for s in SCHEDULES] + [("lomdm", True)])
def test_nelbo_estimate_is_unbiased_against_mask_enumeration(schedule, shift):
    model = tiny_model(schedule=schedule, shift=shift, num_key_value_heads=2 if shift else None)
    x, t, n = torch.tensor([5, 17, 42, 9]), 0.4, 4000
    with torch.no_grad():
        exact = exact_integrand(model, x, t).item()
        res = lomdm_loss(
            model,
            x.expand(n, -1),
            t=torch.full((n,), t),
            num_samples=2,
            generator=torch.Generator().manual_seed(1),
        )
    se = res.nelbo.std().item() / math.sqrt(n)
    assert se > 0
    assert abs(res.nelbo.mean().item() - exact) < 4.5 * se, (res.nelbo.mean().item(), exact, se)


def _scheduler_params(model, schedule):
    if schedule == "lomdm":
        return list(model.forward_scheduler.parameters())
    return [model.position_scores.weight]


def _mc_gradients(
    model, params, x, t, *, estimator, chunks=24, chunk_size=400, num_samples=2, seed=0, token_baseline=None
):
    """Mean gradients over `chunks` chunks of `chunk_size` copies of x, at time t (sampled times if t is None)."""
    grads = []
    generator = torch.Generator().manual_seed(seed)
    for _ in range(chunks):
        model.zero_grad()
        res = lomdm_loss(
            model,
            x.expand(chunk_size, -1),
            t=None if t is None else torch.full((chunk_size,), t),
            num_samples=num_samples,
            estimator=estimator,
            generator=generator,
            token_baseline=token_baseline,
        )
        (res.loss * res.num_tokens.sum() / chunk_size).backward()  # = mean per-sequence surrogate
        grads.append(torch.cat([p.grad.flatten() for p in params]).double())
    return torch.stack(grads)  # (chunks, P): each row the mean over one chunk


def exact_integrand_pathwise(model, x: torch.Tensor, t: float) -> torch.Tensor:
    """The enumerated expectation with q(z | x) held constant: its gradient is the pathwise part only."""
    masks = all_masks(x.numel())
    e, s = reference_terms(model, x, masks)
    p_mask = (t**e).detach()
    q = torch.where(masks, p_mask, 1 - p_mask).prod(-1)
    return (q * s).sum() / t


def _flat_grad(model, params, value: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    value.backward()
    return torch.cat([p.grad.flatten() for p in params]).double()


# (t, chunks of 400 rows, sigmas): where the score part is long enough against the RLOO noise to be detected.
# Measured |score| / SE: ~0.6 * sqrt(chunks) for lomdm at t = 0.2 (its scheduler gradient is noisy on 4 tokens),
# ~2 * sqrt(chunks) for per_position at t = 0.5.
@pytest.mark.parametrize(
    ("schedule", "t", "chunks", "sigmas"), [("lomdm", 0.2, 40, 3), ("per_position", 0.5, 24, 5)]
)
def test_rloo_gradient_matches_gradient_of_enumerated_expectation(schedule, t, chunks, sigmas):
    model = tiny_model(schedule=schedule)
    params = _scheduler_params(model, schedule)
    x = torch.tensor([5, 17, 42, 9])
    exact = _flat_grad(model, params, exact_integrand(model, x, t))
    pathwise = _flat_grad(model, params, exact_integrand_pathwise(model, x, t))
    score = exact - pathwise  # the part only a score-function estimator can see

    generator = torch.Generator().manual_seed(0)
    directions = torch.cat(
        [exact[None], score[None], torch.randn(3, exact.numel(), generator=generator, dtype=torch.float64)]
    )
    directions = directions / directions.norm(dim=-1, keepdim=True)

    def t_stats(grads, target):
        proj = grads @ directions.T  # (chunks, 5)
        se = proj.std(0) / math.sqrt(grads.shape[0])
        return ((proj.mean(0) - directions @ target) / se).abs(), se

    rloo_t, rloo_se = t_stats(_mc_gradients(model, params, x, t, estimator="rloo", chunks=chunks), exact)
    assert rloo_t.max() < 5
    # Power: the score part is several standard errors long, so an estimator without it fails the check above ...
    assert (directions[1] @ score).abs() > sigmas * rloo_se[1]
    # ... and the plain estimator (no score term) is exactly the pathwise gradient.
    plain_t, _ = t_stats(_mc_gradients(model, params, x, t, estimator="plain", chunks=12), pathwise)
    assert plain_t.max() < 5


def test_rloo_has_lower_variance_than_plain_reinforce():
    """REINFORCE without baseline, L_k + log q(z^k) * sg(L_k), written here from SPEC §1 with the same K = 2.

    On a 32-token sequence the loss is far from zero on every sample (mean^2 >> variance), which is where
    a baseline matters; on 3-4 tokens the two are close."""
    model = tiny_model(schedule="lomdm")
    params = _scheduler_params(model, "lomdm")
    x = torch.randint(4, 99, (32,), generator=torch.Generator().manual_seed(0))
    t, chunk, chunks = 0.5, 50, 16
    rloo = _mc_gradients(model, params, x, t, estimator="rloo", chunks=chunks, chunk_size=chunk)

    generator = torch.Generator().manual_seed(0)
    reinforce = []
    for _ in range(chunks):
        model.zero_grad()
        xs = x.expand(chunk, -1)
        e = model.forward_exponents(xs)
        surrogate = 0.0
        for _k in range(2):
            z_is_mask = torch.rand(xs.shape, generator=generator) < t ** e.detach()
            out = model(torch.where(z_is_mask, MASK_ID, xs))
            log_p = out.logits.gather(-1, xs[..., None]).squeeze(-1)
            per_token = e * -torch.where(z_is_mask, log_p, 0.0) + S.velocity_matching(
                e, out.reverse_exponents
            )
            loss = (per_token * z_is_mask).sum(-1) / t
            log_q = S.log_q(z_is_mask, torch.full((chunk, 1), math.log(t)), e, torch.ones_like(z_is_mask))
            surrogate = surrogate + (loss + log_q * loss.detach()).mean() / 2
        surrogate.backward()
        reinforce.append(torch.cat([p.grad.flatten() for p in params]).double())
    reinforce = torch.stack(reinforce)
    assert reinforce.var(0).sum() > 2 * rloo.var(0).sum()


def plackett_luce_order_nelbo(model, x: torch.Tensor) -> float:
    """-sum_pi P(pi) log prod_k p(x_pi(k) | positions revealed before it),
    P(pi) = prod_k e_pi(k) / sum_{j>=k} e_pi(j)."""
    e = model.forward_exponents(x[None])[0].double()
    total = 0.0
    for perm in itertools.permutations(range(x.numel())):
        prob, log_lik = 1.0, 0.0
        revealed = torch.zeros(x.numel(), dtype=torch.bool)
        for k, i in enumerate(perm):
            prob *= (e[i] / e[list(perm[k:])].sum()).item()
            z = torch.where(revealed, x, torch.full_like(x, MASK_ID))
            log_lik += model(z[None]).logits[0, i, x[i]].item()
            revealed[i] = True
        total += -prob * log_lik
    return total


def closed_form_time_integral(model, x: torch.Tensor) -> float:
    """Integral over t in (0, 1] of the exact integrand, in closed form: with t = exp(-s),
    int_0^1 q(z_A|t) S_A / t dt = S_A * sum_{C subset of B} (-1)^|C| / sum_{i in A u C} e_i  (B = unmasked)."""
    masks = all_masks(x.numel())
    e, s = reference_terms(model, x, masks)
    total = 0.0
    for mask, s_a in zip(masks, s):
        if not mask.any():
            continue
        unmasked = (~mask).nonzero().flatten().tolist()
        for size in range(len(unmasked) + 1):
            for c in itertools.combinations(unmasked, size):
                rate = e[mask].sum() + e[list(c)].sum()
                total += s_a.item() * (-1) ** size / rate.item()
    return total


@pytest.mark.parametrize(
    ("schedule", "shift"), [("linear", False), ("per_position", False), ("per_position", True)]
)
def test_nelbo_equals_order_weighted_autoregressive_loss(schedule, shift):
    """Prop. 3.1 of arXiv 2511.19152 on L = 3 (all 6 orders), and the importance-sampled bound matches it."""
    model = tiny_model(schedule=schedule, shift=shift)
    x = torch.tensor([5, 17, 42])
    with torch.no_grad():
        order_nelbo = plackett_luce_order_nelbo(model, x)
        assert closed_form_time_integral(model, x) == pytest.approx(order_nelbo, rel=1e-5)
        n = 20000
        res = lomdm_loss(
            model,
            x.expand(n, -1),
            num_samples=1,
            estimator="plain",
            generator=torch.Generator().manual_seed(0),
        )
    se = res.nelbo.std().item() / math.sqrt(n)
    assert abs(res.nelbo.mean().item() - order_nelbo) < 4.5 * se, (res.nelbo.mean().item(), order_nelbo, se)


def test_uniform_eps_truncation_underestimates_nelbo_with_small_exponents():
    """SPEC §1: dropping [0, eps) loses eps^e of each token's weight -- most of it when e is near 0.05."""
    model = tiny_model(schedule="per_position", c1=0.1, c2=0.09)
    x = torch.tensor([5, 17, 42])
    n = 20000
    with torch.no_grad():
        true_nelbo = plackett_luce_order_nelbo(model, x)
        res = lomdm_loss(
            model,
            x.expand(n, -1),
            num_samples=1,
            estimator="plain",
            time_sampling="uniform_eps",
            generator=torch.Generator().manual_seed(0),
        )
    se = res.nelbo.std().item() / math.sqrt(n)
    assert res.nelbo.mean().item() < true_nelbo - 10 * se


def mdlm_loss_reference(model, input_ids, generator, eps=1e-3):
    """MDLM's continuous-time loss with the log-linear schedule, written from its paper: t ~ U(eps, 1)
    (antithetic), each token masked with probability t, loss = sum_{masked} -log p(x_i | z_t) / t per token."""
    batch, length = input_ids.shape
    u0 = torch.rand(1, generator=generator, dtype=torch.float64)
    t = (eps + (1 - eps) * ((u0 + torch.arange(batch, dtype=torch.float64) / batch) % 1.0)).float()
    masked = torch.rand((1, batch, length), generator=generator)[0] < t[:, None]
    z = torch.where(masked, MASK_ID, input_ids)
    hidden = model.model(z).last_hidden_state
    logits = model.lm_head(hidden).float()
    logits[..., MASK_ID] = -math.inf
    log_p = torch.log_softmax(logits, -1).gather(-1, input_ids[..., None]).squeeze(-1)
    return (torch.where(masked, -log_p, 0.0).sum(-1) / t).sum() / input_ids.numel()


def test_c1_one_c2_zero_recovers_mdlm_loss():
    model = tiny_model(schedule="linear")
    input_ids = torch.randint(4, 99, (8, 16), generator=torch.Generator().manual_seed(3))
    res = lomdm_loss(
        model,
        input_ids,
        num_samples=1,
        estimator="plain",
        time_sampling="uniform_eps",
        generator=torch.Generator().manual_seed(7),
    )
    expected = mdlm_loss_reference(model, input_ids, torch.Generator().manual_seed(7))
    torch.testing.assert_close(res.loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_velocity_loss_zero_when_rates_match(schedule):
    model = tiny_model(schedule=schedule)
    res = lomdm_loss(model, torch.randint(4, 99, (4, 12)), generator=torch.Generator().manual_seed(0))
    if schedule == "lomdm":
        assert res.loss_velocity.sum() > 0
    else:
        assert torch.all(res.loss_velocity == 0)
    torch.testing.assert_close(res.nelbo, res.loss_main + res.loss_velocity)


def test_rloo_term_stops_gradient_through_loss_difference():
    """The score term only reaches parameters of log q (g_φ): the backbone gradient equals the plain one."""
    model = tiny_model(schedule="lomdm")
    input_ids = torch.randint(4, 99, (4, 12), generator=torch.Generator().manual_seed(0))
    grads = {}
    for estimator in ("rloo", "plain"):
        model.zero_grad()
        lomdm_loss(
            model, input_ids, num_samples=2, estimator=estimator, generator=torch.Generator().manual_seed(5)
        ).loss.backward()
        grads[estimator] = (
            model.lm_head.weight.grad.clone(),
            model.reverse_scheduler.score_proj.weight.grad.clone(),
            model.forward_scheduler.score_proj.weight.grad.clone(),
        )
    torch.testing.assert_close(grads["rloo"][0], grads["plain"][0])
    torch.testing.assert_close(grads["rloo"][1], grads["plain"][1])
    assert not torch.allclose(grads["rloo"][2], grads["plain"][2])


def test_labels_minus_100_are_never_noised_and_do_not_count():
    model = tiny_model(schedule="lomdm")
    input_ids = torch.randint(4, 99, (3, 10), generator=torch.Generator().manual_seed(0))
    labels = input_ids.clone()
    labels[:, :4] = -100  # a prompt
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -2:] = 0
    res = lomdm_loss(model, input_ids, attention_mask, labels, t=torch.ones(3), generator=torch.Generator())
    assert res.num_tokens.tolist() == [4, 6, 6]
    assert not res.noise_mask[:, :4].any() and not res.noise_mask[0, -2:].any()
    # at t = 1 every noisable token is masked, every other one is kept: confidence is NaN exactly off M
    assert torch.equal(~torch.isnan(res.confidence), res.noise_mask)


def test_loss_is_deterministic_under_a_generator():
    model = tiny_model()
    input_ids = torch.randint(4, 99, (4, 12))
    a = lomdm_loss(model, input_ids, generator=torch.Generator().manual_seed(0))
    b = lomdm_loss(model, input_ids, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.nelbo, b.nelbo)


def test_importance_times_are_antithetic_and_cover_the_unit_interval():
    model = tiny_model(schedule="linear")
    res = lomdm_loss(model, torch.randint(4, 99, (16, 4)), generator=torch.Generator().manual_seed(0))
    # a = 1/2 for linear: F(t) = t/2 + sqrt(t)/2 maps the 16 evenly spaced u back exactly
    u = torch.sort(0.5 * res.t + 0.5 * res.t.sqrt()).values
    torch.testing.assert_close(torch.diff(u), torch.full((15,), 1 / 16, dtype=torch.float64))


def test_bf16_autocast_loss_close_to_float32():
    model = tiny_model()
    input_ids = torch.randint(4, 99, (4, 16))
    t = torch.full((4,), 0.5)
    ref = lomdm_loss(model, input_ids, t=t, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = lomdm_loss(model, input_ids, t=t, generator=torch.Generator().manual_seed(0))
    assert low.nelbo.dtype == torch.float32 and torch.isfinite(low.loss)
    torch.testing.assert_close(low.nelbo, ref.nelbo, rtol=0.05, atol=0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_samples=1), "RLOO estimator needs"),
        (dict(num_samples=0, estimator="plain"), "num_samples"),
        (dict(estimator="reinforce"), "estimator"),
        (dict(time_sampling="uniform"), "time_sampling"),
        (dict(t=torch.tensor([0.0, 0.5])), "values in \\(0, 1\\]"),
        (dict(t=torch.tensor([0.5])), "must be a \\(2,\\) tensor"),
    ],
)
def test_bad_loss_arguments_raise_value_error(kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        lomdm_loss(model, torch.randint(4, 99, (2, 8)), **kwargs)


def test_mask_token_in_labels_or_clean_input_raises():
    model = tiny_model()
    input_ids = torch.randint(4, 99, (2, 8))
    labels = input_ids.clone()
    labels[0, 3] = MASK_ID
    with pytest.raises(ValueError, match="labels` contain the mask token"):
        lomdm_loss(model, input_ids, labels=labels)
    input_ids[1, 2] = MASK_ID
    with pytest.raises(ValueError, match="clean `input_ids` contain the mask token"):
        lomdm_loss(model, input_ids)


# --- The per-token estimators (ptcv, tcv) -----------------------------------------------------------------


def _random_token_baseline(seed: int = 0) -> torch.Tensor:
    # Any z-free table keeps the estimators unbiased; a random one checks that nothing relies on a good table.
    return 3.0 + torch.rand(99, generator=torch.Generator().manual_seed(seed))


def _directions(exact: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    directions = torch.cat(
        [exact[None], score[None], torch.randn(3, exact.numel(), generator=generator, dtype=torch.float64)]
    )
    return directions / directions.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize(("estimator", "num_samples"), [("ptcv", 1), ("ptcv", 2), ("tcv", 1), ("tcv", 2)])
@pytest.mark.parametrize("schedule", ["lomdm", "per_position"])
def test_token_baseline_gradient_matches_enumerated_expectation_at_fixed_t(schedule, estimator, num_samples):
    model = tiny_model(schedule=schedule)
    params = _scheduler_params(model, schedule)
    x, t = torch.tensor([5, 17, 42, 9]), 0.5
    exact = _flat_grad(model, params, exact_integrand(model, x, t))
    score = exact - _flat_grad(model, params, exact_integrand_pathwise(model, x, t))
    directions = _directions(exact, score)
    grads = _mc_gradients(
        model,
        params,
        x,
        t,
        estimator=estimator,
        num_samples=num_samples,
        token_baseline=_random_token_baseline(),
    )
    proj = grads @ directions.T  # (chunks, 5)
    se = proj.std(0) / math.sqrt(grads.shape[0])
    z = (proj.mean(0) - directions @ exact) / se
    assert z.abs().max() < 5, z
    # Power: an estimator that dropped the score part would sit this many standard errors away.
    assert (directions[1] @ score).abs() > 4 * se[1]


def _closed_form_time_integral_tensor(model, x: torch.Tensor) -> torch.Tensor:
    """`closed_form_time_integral` as a differentiable tensor: the exact NELBO of x, integrated over all t."""
    masks = all_masks(x.numel())
    e, s = reference_terms(model, x, masks)
    total = torch.zeros((), dtype=torch.float64)
    for mask, s_a in zip(masks, s):
        if not mask.any():
            continue
        unmasked = (~mask).nonzero().flatten().tolist()
        for size in range(len(unmasked) + 1):
            for c in itertools.combinations(unmasked, size):
                total = total + s_a * (-1) ** size / (e[mask].sum() + e[list(c)].sum())
    return total


@pytest.mark.parametrize("num_samples", [1, 2])
def test_tcv_gradient_is_unbiased_over_sampled_times(num_samples):
    """tcv drops w c_i ∂_e(e_i t^{e_i}), whose mean over t is 0: unbiased for the time integral, not per t."""
    # A denoiser that uses context (a wider init): with a context-free one the true gradient is 0 over t.
    model = tiny_model(schedule="per_position", initializer_range=0.3)
    params = _scheduler_params(model, "per_position")
    x = torch.tensor([5, 17, 42])
    exact = _flat_grad(model, params, _closed_form_time_integral_tensor(model, x))[:3]  # θ of positions 0..2
    grads = _mc_gradients(
        model,
        params,
        x,
        None,
        estimator="tcv",
        num_samples=num_samples,
        chunks=32,
        chunk_size=500,
        token_baseline=_random_token_baseline(),
    )[:, :3]
    se = grads.std(0) / math.sqrt(grads.shape[0])
    z = (grads.mean(0) - exact) / se
    assert z.abs().max() < 5, (grads.mean(0), exact, se)
    assert exact.abs().max() > 6 * se.max()  # the check has power: the gradient is many s.e. from 0


def test_dropped_tcv_term_has_zero_mean_over_time_for_the_importance_mixture():
    # ∫_0^1 (1/t) ∂_e(e t^e) dt = 0: checked by the objective's own time sampler (importance weight 1/(t q(t))).
    e = torch.tensor([0.05, 0.3, 0.7, 1.35], dtype=torch.float64)
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    a = float(e.min()) / 2
    log_t = S.sample_log_times(u, a, 0.5)[:, None]  # (N, 1)
    log_w = -log_t - S.log_time_density(log_t, a, 0.5)
    d_e = torch.exp(e * log_t) * (1 + e * log_t)  # ∂_e(e t^e)
    mean = (torch.exp(log_w) * d_e).mean(0)
    torch.testing.assert_close(mean, torch.zeros(4, dtype=torch.float64), atol=2e-2, rtol=0)
    assert float((torch.exp(log_w) * d_e).abs().mean(0).min()) > 0.3  # the integrand itself is far from 0


@pytest.mark.parametrize("estimator", ["rloo", "ptcv", "tcv"])
def test_score_function_part_has_value_zero_and_nothing_to_do_for_fixed_schedules(estimator):
    x = torch.randint(4, 99, (6, 12), generator=torch.Generator().manual_seed(0))
    for schedule in ("lomdm", "polynomial"):
        model = tiny_model(schedule=schedule)
        res = lomdm_loss(model, x, estimator=estimator, generator=torch.Generator().manual_seed(1))
        plain = lomdm_loss(model, x, estimator="plain", generator=torch.Generator().manual_seed(1))
        # value: the NELBO estimate per token, whatever the estimator
        torch.testing.assert_close(res.loss, res.nelbo.sum() / res.num_tokens.sum())
        torch.testing.assert_close(res.loss, plain.loss)
        if schedule == "polynomial":  # no learned exponents: the same gradient as plain for the backbone
            g = torch.autograd.grad(res.loss, list(model.parameters()))
            g_plain = torch.autograd.grad(plain.loss, list(model.parameters()))
            for a, b in zip(g, g_plain):
                torch.testing.assert_close(a, b)


def test_tcv_gradient_is_exactly_zero_for_a_context_free_denoiser_with_its_own_losses():
    """With p_θ(x_i | z) independent of z the NELBO does not depend on e; tcv with c = ℓ returns exactly 0."""
    model = tiny_model(schedule="per_position", num_hidden_layers=1)
    with torch.no_grad():  # a context-free denoiser: zero features, so p_θ(. | z) is uniform whatever z is
        for p in model.model.parameters():
            p.zero_()
    x = torch.randint(4, 99, (16, 8), generator=torch.Generator().manual_seed(0))
    probe = lomdm_loss(model, x, num_samples=1, estimator="plain", generator=torch.Generator().manual_seed(2))
    losses = probe.token_loss[probe.is_mask]
    # ℓ = log(V - 1) for every token
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(98)))
    table = torch.full((99,), math.log(98))  # c = ℓ exactly
    model.zero_grad()
    res = lomdm_loss(
        model,
        x,
        num_samples=1,
        estimator="tcv",
        token_baseline=table,
        generator=torch.Generator().manual_seed(3),
    )
    res.loss.backward()
    assert model.position_scores.weight.grad.abs().max() < 1e-6


def test_update_token_baseline_averages_each_id_over_its_masked_positions():
    model = tiny_model(schedule="lomdm")
    x = torch.tensor([[5, 5, 7, 9]])
    res = lomdm_loss(
        model, x, num_samples=2, t=torch.tensor([0.999]), generator=torch.Generator().manual_seed(0)
    )
    table = torch.full((99,), 2.0)
    new = update_token_baseline(table, res, decay=0.75)
    for token in (5, 7, 9):
        where = res.is_mask & (res.targets == token)
        expected = 0.75 * 2.0 + 0.25 * res.token_loss[where].mean() if where.any() else torch.tensor(2.0)
        torch.testing.assert_close(new[token], expected.float())
    assert torch.equal(new[10:], table[10:])  # ids absent from the batch keep their value
    with pytest.raises(ValueError, match=r"`decay` must be in \[0, 1\), got 1.0"):
        update_token_baseline(table, res, decay=1.0)


def test_token_baseline_with_the_wrong_shape_is_rejected():
    model = tiny_model(schedule="lomdm")
    with pytest.raises(ValueError, match=r"`token_baseline` must have shape \(99,\), got \(98,\)"):
        lomdm_loss(model, torch.tensor([[5, 6, 7]]), estimator="tcv", token_baseline=torch.zeros(98))
