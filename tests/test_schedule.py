"""Properties of the schedule formulas (schedule_lomdm.py), cross-checked against autograd and sampling."""

from __future__ import annotations

import math

import pytest
import torch

from hf_lomdm import schedule_lomdm as S


def test_velocity_equals_minus_dalpha_over_one_minus_alpha():
    t = torch.tensor([0.01, 0.2, 0.5, 0.93], dtype=torch.float64, requires_grad=True)
    e = torch.tensor([0.05, 0.3, 1.0, 1.35], dtype=torch.float64)
    alpha = S.alpha(t.log(), e)
    (dalpha,) = torch.autograd.grad(alpha.sum(), t)
    expected = -dalpha / (1 - alpha)
    torch.testing.assert_close(S.velocity(t.log(), e), expected.detach())


def test_normsig_has_zero_mean_over_noise_mask_and_is_zero_outside():
    scores = torch.randn(3, 7)
    noise_mask = torch.rand(3, 7) > 0.3
    noise_mask[:, 0] = True
    ns = S.normsig(scores, noise_mask)
    means = (ns * noise_mask).sum(-1) / noise_mask.sum(-1)
    torch.testing.assert_close(means, torch.zeros(3), atol=1e-6, rtol=0)
    assert torch.all(ns[~noise_mask] == 0)


def test_exponents_stay_in_open_interval_c1_minus_c2_c1_plus_c2():
    scores = torch.randn(4, 50) * 30  # saturated sigmoids are the worst case
    e = S.exponents(scores, torch.ones(4, 50, dtype=torch.bool), c1=0.7, c2=0.65)
    assert e.min() >= 0.05 and e.max() <= 1.35


def test_c2_zero_recovers_polynomial_schedule():
    e = S.exponents(torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool), c1=0.7, c2=0.0)
    torch.testing.assert_close(e, torch.full((2, 5), 0.7))


def test_log_q_matches_independent_bernoulli_log_likelihood():
    torch.manual_seed(0)
    e = torch.rand(2, 6, dtype=torch.float64) + 0.1
    t = torch.tensor([[0.3], [0.8]], dtype=torch.float64)
    z_is_mask = torch.rand(2, 6) > 0.5
    noise_mask = torch.ones(2, 6, dtype=torch.bool)
    noise_mask[1, -2:] = False
    p = t**e  # P(mask) written out, independently of schedule_lomdm
    expected = (torch.where(z_is_mask, p.log(), (1 - p).log()) * noise_mask).sum(-1)
    torch.testing.assert_close(S.log_q(z_is_mask, t.log(), e, noise_mask), expected)


def test_log_q_gradient_is_finite_at_t_equal_one():
    e = torch.full((1, 3), 0.7, requires_grad=True)
    z_is_mask = torch.ones(1, 3, dtype=torch.bool)  # at t = 1 every token is masked
    S.log_q(z_is_mask, torch.zeros(1, 1), e, torch.ones(1, 3, dtype=torch.bool)).sum().backward()
    assert torch.isfinite(e.grad).all()


def test_unmask_prob_is_ratio_of_mask_probabilities():
    e = torch.tensor([0.2, 1.0, 1.3])
    log_s, log_t = torch.tensor(math.log(0.3)), torch.tensor(math.log(0.7))
    expected = 1 - S.mask_prob(log_s, e) / S.mask_prob(log_t, e)
    torch.testing.assert_close(S.unmask_prob(log_s, log_t, e), expected)
    # the last step of any grid (s = 0) reveals everything
    assert torch.all(S.unmask_prob(torch.tensor(-math.inf), log_t, e) == 1)


def test_first_hitting_time_has_the_reverse_step_distribution():
    # P(reveal time in [s, t)) must equal unmask_prob(s, t, e) for the exact first-hitting sampler.
    generator = torch.Generator().manual_seed(0)
    n, e = 200_000, torch.tensor(0.4, dtype=torch.float64)
    log_t, log_s = (
        torch.tensor(math.log(0.9), dtype=torch.float64),
        torch.tensor(math.log(0.5), dtype=torch.float64),
    )
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    revealed = (S.reveal_log_time(log_t, u, e) >= log_s).double().mean()
    p = float(S.unmask_prob(log_s, log_t, e))
    assert abs(float(revealed) - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("uniform_weight", [0.0, 0.5, 1.0])
def test_sample_log_times_inverts_the_mixture_cdf(uniform_weight):
    u = torch.tensor([1e-12, 1e-4, 0.1, 0.5, 0.999], dtype=torch.float64)
    a = 0.025
    log_t = S.sample_log_times(u, a, uniform_weight)
    cdf = uniform_weight * log_t.exp() + (1 - uniform_weight) * (a * log_t).exp()
    torch.testing.assert_close(cdf, u, rtol=1e-9, atol=0)


def test_sample_log_times_handles_times_below_float64_range():
    # a = 0.025 and u = 1e-12: t = (2e-12)**40 ~ 1e-466, far below float64's smallest normal.
    log_t = S.sample_log_times(torch.tensor([1e-12], dtype=torch.float64), 0.025, 0.5)
    assert torch.isfinite(log_t).all() and log_t.item() < -1000


def test_importance_sampler_integrates_reveal_density_to_one():
    # The reveal-time density of a token, e t^(e-1), integrates to 1 on (0, 1]; estimate it as E_q[f / q].
    generator = torch.Generator().manual_seed(0)
    n, a, w = 400_000, 0.025, 0.5
    log_t = S.sample_log_times(torch.rand(n, generator=generator, dtype=torch.float64), a, w)
    for e in (0.05, 0.3, 1.0):
        ratio = torch.exp(math.log(e) + (e - 1) * log_t - S.log_time_density(log_t, a, w))
        assert abs(ratio.mean().item() - 1.0) < 5 * ratio.std().item() / math.sqrt(n)


def test_velocity_matching_is_nonnegative_and_zero_iff_rates_match():
    e = torch.rand(1000, dtype=torch.float64) + 0.05
    e_hat = torch.rand(1000, dtype=torch.float64) + 0.05
    assert torch.all(S.velocity_matching(e, e_hat) >= 0)
    assert torch.all(S.velocity_matching(e, e) == 0)


def test_smallest_exponent_per_schedule():
    assert S.smallest_exponent("linear", 0.7, 0.65) == 1.0
    assert S.smallest_exponent("polynomial", 0.7, 0.65) == 0.7
    assert S.smallest_exponent("lomdm", 0.7, 0.65) == pytest.approx(0.05)


def test_mixture_power_is_half_the_smallest_exponent_of_each_row():
    e = torch.tensor([[0.7, 0.3, 1.2], [0.9, 0.05, 0.8]])
    noise_mask = torch.tensor([[True, True, False], [True, False, False]])
    a = S.mixture_power(e, noise_mask, floor=0.025)
    torch.testing.assert_close(a, torch.tensor([0.15, 0.45], dtype=torch.float64))
    empty = S.mixture_power(e, torch.zeros_like(noise_mask), floor=0.025)
    torch.testing.assert_close(empty, torch.full((2,), 0.025, dtype=torch.float64))


def test_per_row_mixtures_invert_their_own_cdf():
    u = torch.tensor([1e-6, 0.3, 0.9], dtype=torch.float64)
    a = torch.tensor([0.025, 0.35, 0.5], dtype=torch.float64)
    log_t = S.sample_log_times(u, a, 0.5)
    torch.testing.assert_close(0.5 * log_t.exp() + 0.5 * (a * log_t).exp(), u, rtol=1e-9, atol=0)


def test_normsig_centres_the_scores_over_the_noise_mask_first():
    # A common shift of the scores on M changes nothing (NormSig only sees differences), and the result is
    # sigmoid of the centred scores minus its mean: independent of whatever lies outside M.
    scores = torch.tensor([[3.0, -1.0, 0.5, 40.0]])
    noise_mask = torch.tensor([[True, True, True, False]])
    centred = scores[:, :3] - scores[:, :3].mean()
    expected = torch.sigmoid(centred) - torch.sigmoid(centred).mean()
    torch.testing.assert_close(S.normsig(scores, noise_mask)[:, :3], expected)
    for shift in (-30.0, 25.0):  # raw NormSig would saturate here (every sigmoid at 0 or 1)
        torch.testing.assert_close(S.normsig(scores + shift, noise_mask), S.normsig(scores, noise_mask))


def test_saturated_marks_positions_whose_sigmoid_has_flattened():
    scores = torch.tensor([[10.0, -10.0, 0.1, 0.0, 50.0]])
    noise_mask = torch.tensor([[True, True, True, True, False]])
    assert S.saturated(scores, noise_mask).tolist() == [[True, True, False, False, False]]
    # The common mode of the scores cannot saturate anything: only differences count.
    assert torch.equal(S.saturated(scores + 1e3, noise_mask), S.saturated(scores, noise_mask))


# --- The schedule registry --------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", list(S.SCHEDULES))
def test_model_builds_exactly_the_learned_modules_the_registry_declares(schedule):
    from helpers import tiny_model

    from hf_lomdm.parameter_groups import is_scheduler_parameter, scheduler_modules

    model = tiny_model(schedule=schedule)
    kind = S.SCHEDULES[schedule]
    assert scheduler_modules(model) == [n for n in S.SCHEDULER_MODULE_NAMES if n in kind.learned_modules]
    for name in S.SCHEDULER_MODULE_NAMES:
        assert (getattr(model, name) is not None) == (name in kind.learned_modules)
    learned = {n for n, _ in model.named_parameters() if is_scheduler_parameter(n)}
    assert learned == {n for n, _ in model.named_parameters() if n.split(".")[0] in kind.learned_modules}


@pytest.mark.parametrize("schedule", list(S.SCHEDULES))
def test_registry_exponents_stay_within_the_declared_smallest_exponent(schedule):
    kind = S.SCHEDULES[schedule]
    noise_mask = torch.ones(4, 9, dtype=torch.bool)
    scores = None if kind.scores == "none" else 50 * torch.randn(4, 9)  # saturating scores reach the extremes
    e = kind.exponents(scores, noise_mask, 0.7, 0.65)
    assert e.shape == (4, 9)
    assert float(e.min()) >= kind.smallest_exponent(0.7, 0.65) - 1e-6
    assert S.smallest_exponent(schedule, 0.7, 0.65) == kind.smallest_exponent(0.7, 0.65)


def test_unknown_schedule_is_rejected_by_the_config_with_the_registry_names():
    from hf_lomdm import LoMDMConfig

    with pytest.raises(
        ValueError, match=r"`schedule` must be one of \('linear', 'polynomial', 'per_position'"
    ):
        LoMDMConfig(schedule="cosine")


def test_schedule_kind_names_are_spelled_only_in_the_registry():
    # A new kind must touch one file: no module of the package branches on a kind's name.
    from pathlib import Path

    package = Path(S.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "schedule_lomdm.py":
            continue
        text = path.read_text(encoding="utf-8")
        for name in ("per_position", "polynomial"):
            assert f'"{name}"' not in text, f"{path.relative_to(package)} spells the schedule kind {name!r}"


# --- The forward noise draw -------------------------------------------------------------------------------


def test_add_noise_masks_with_probability_t_to_the_e_and_never_outside_m():
    batch, length = 2000, 6
    e = torch.tensor([0.1, 0.5, 1.0, 1.3, 0.7, 0.7]).expand(batch, -1)
    noise_mask = torch.ones(batch, length, dtype=torch.bool)
    noise_mask[:, -1] = False
    t = torch.full((batch,), 0.4, dtype=torch.float64)
    spec = S.sample_noise(
        batch, length, num_samples=2, t=t, floor=0.025, generator=torch.Generator().manual_seed(0)
    )
    draw = S.add_noise(spec, e, noise_mask)
    assert draw.is_mask.shape == (2, batch, length) and not bool(draw.is_mask[..., -1].any())
    rate = draw.is_mask[..., :-1].double().mean((0, 1))
    expected = 0.4 ** e[0, :-1].double()
    se = (expected * (1 - expected) / (2 * batch)).sqrt()
    assert bool(((rate - expected).abs() < 4 * se).all()), (rate, expected)
    torch.testing.assert_close(draw.log_t, t.log())
    torch.testing.assert_close(draw.log_weight, -t.log())  # a given t carries the integrand's 1/t, no q(t)


def test_add_noise_importance_weight_is_one_over_t_q_of_t():
    e = torch.full((8, 5), 0.7)
    noise_mask = torch.ones(8, 5, dtype=torch.bool)
    spec = S.sample_noise(8, 5, num_samples=1, floor=0.025, generator=torch.Generator().manual_seed(3))
    draw = S.add_noise(spec, e, noise_mask)
    a = S.mixture_power(e, noise_mask, 0.025)  # 0.35 per row
    expected = -draw.log_t - S.log_time_density(draw.log_t, a, S.TIME_UNIFORM_WEIGHT)
    torch.testing.assert_close(draw.log_weight, expected)
    # the antithetic uniforms behind the times are spaced 1/B apart
    gaps = torch.diff(torch.sort(spec.time_uniforms).values)
    torch.testing.assert_close(gaps, torch.full((7,), 1 / 8, dtype=torch.float64))


def test_sample_noise_rejects_times_outside_zero_one():
    with pytest.raises(ValueError, match=r"`t` must be a \(2,\) tensor with values in \(0, 1\]"):
        S.sample_noise(2, 3, num_samples=1, t=torch.tensor([0.5, 0.0]), floor=0.025)


def test_model_returns_the_draw_and_leaves_the_noise_spec_untouched():
    from helpers import tiny_model

    model = tiny_model(schedule="lomdm")
    x = torch.randint(4, 99, (3, 10), generator=torch.Generator().manual_seed(0))
    noise_mask = torch.ones_like(x, dtype=torch.bool)
    spec = S.sample_noise(3, 10, num_samples=2, floor=0.025, generator=torch.Generator().manual_seed(1))
    before = spec.mask_uniforms.clone()
    with torch.no_grad():
        out = model(x, noise=spec)
        e = model.forward_exponents(x)
    expected = S.add_noise(spec, e, noise_mask)
    assert torch.equal(out.noise_draw.is_mask, expected.is_mask)
    torch.testing.assert_close(out.noise_draw.log_t, expected.log_t)
    torch.testing.assert_close(out.noise_draw.log_weight, expected.log_weight)
    assert torch.equal(spec.mask_uniforms, before)
    assert out.logits is None and out.packed_log_probs.shape == (int(expected.is_mask.sum()), 99)
