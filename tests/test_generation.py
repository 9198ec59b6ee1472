"""Properties of `model.generate` and the LoMDM sampler."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import MASK_ID
from transformers import AutoModelForMaskedLM, LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from hf_lomdm import LoMDMGenerationConfig, LoMDMSampler
from hf_lomdm.reveal_lomdm import REVEAL_OPTIONS, REVEAL_RULES, RevealContext, build_reveal_rule
from hf_lomdm.sampler_lomdm import sample_categorical
from hf_lomdm.schedule_lomdm import unmask_prob

EOS_ID, PAD_ID = 3, 1

# (order, steps, extra settings): every sampler family, including threshold and semi-AR blocks.
SAMPLERS = [
    ("learned", None, {}),
    ("learned", 8, {}),
    ("random", 5, {}),
    ("confidence", None, {}),
    ("margin", 3, {}),
    ("entropy", 6, {}),
    ("left_to_right", 2, {}),
    ("learned_ranked", 3, {}),
    ("learned_ranked", None, {"order_temperature": 1.0}),
    ("margin_learned", 3, {}),
    ("confidence_learned", None, {"order_weight": 0.5}),
    ("confidence", None, {"threshold": 0.02}),
    ("learned", 4, {"block_length": 3}),
    # Rows finish blocks at different passes here: a row must stop drawing randomness when its block is done.
    ("learned", None, {"block_length": 3, "eps": 0.7}),
    ("confidence", None, {"block_length": 3, "threshold": 0.5, "temperature": 0.05}),
]
SAMPLER_IDS = [f"{order}-{steps}-{'-'.join(extra) or 'plain'}" for order, steps, extra in SAMPLERS]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run 10-40x faster on one thread when the CPU is shared (no oversubscription spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def two_position_model(make_model):
    """`per_position` schedule: scores -6 on the 3-token prompt, +4 / -2 at the generated positions 3 / 4.

    NormSig centres the scores and averages over the generated positions M only: centred scores +3 / -3,
    σ = 0.95257 / 0.04743, mean 0.5, so ê = 0.7 ± 0.65 * 0.45257 = 0.99417 / 0.40583 and the exact sampler
    reveals position 3 first with probability 0.99417 / 1.4 = 0.71012. (Averaging over the prompt too would
    give 0.5367.)
    """
    model = make_model(schedule="per_position", randomize_schedule=False)
    with torch.no_grad():
        model.position_scores.weight[:3] = -6.0
        model.position_scores.weight[3] = 4.0
        model.position_scores.weight[4] = -2.0
    return model


def first_reveal_rate(
    model, num_rows: int, steps: int | None, seed: int, order: str = "learned", **settings
) -> tuple[float, float]:
    """Fraction of rows revealing position 3 strictly before 4, and fraction revealing both in one pass."""
    prompt = torch.full((num_rows, 3), 10)
    out = model.generate(
        prompt,
        max_new_tokens=2,
        steps=steps,
        order=order,
        **settings,
        return_dict_in_generate=True,
        output_order=True,
        generator=torch.Generator().manual_seed(seed),
    )
    first, second = out.order[:, 3], out.order[:, 4]
    return (first < second).double().mean().item(), (first == second).double().mean().item()


@pytest.mark.parametrize(("order", "steps", "extra"), SAMPLERS, ids=SAMPLER_IDS)
def test_padded_row_matches_prompt_alone(make_model, order, steps, extra):
    model = make_model()
    prompts = [[5], [5, 6], [7, 8, 9, 10]]
    batch = torch.tensor([[PAD_ID] * 3 + [5], [PAD_ID] * 2 + [5, 6], [7, 8, 9, 10]])
    attention_mask = (batch != PAD_ID).long()
    settings = dict(
        max_new_tokens=6, steps=steps, order=order, return_dict_in_generate=True, output_order=True, **extra
    )
    seeds = (11, 12, 13)
    both = model.generate(batch, attention_mask=attention_mask, generator=generators(*seeds), **settings)
    for row, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = model.generate(torch.tensor([prompt]), generator=generators(seed), **settings)
        padding = 4 - len(prompt)
        assert torch.equal(both.sequences[row, padding:], alone.sequences[0]), row
        assert torch.equal(both.order[row, padding:], alone.order[0]), row
        assert both.nfe[row] == alone.nfe[0], row


@pytest.mark.parametrize(("order", "steps", "extra"), SAMPLERS, ids=SAMPLER_IDS)
def test_left_padding_changes_nothing_with_one_generator(make_model, order, steps, extra):
    # One shared generator: the draws are indexed from the row's first real token, not the canvas column.
    model = make_model()
    settings = dict(
        max_new_tokens=6, steps=steps, order=order, return_dict_in_generate=True, output_order=True, **extra
    )
    padded = model.generate(
        torch.tensor([[PAD_ID, PAD_ID, PAD_ID, 5, 6]]),
        attention_mask=torch.tensor([[0, 0, 0, 1, 1]]),
        generator=torch.Generator().manual_seed(7),
        **settings,
    )
    alone = model.generate(torch.tensor([[5, 6]]), generator=torch.Generator().manual_seed(7), **settings)
    assert torch.equal(padded.sequences[0, 3:], alone.sequences[0])
    assert torch.equal(padded.order[0, 3:], alone.order[0])
    assert torch.equal(padded.nfe, alone.nfe)


def test_one_generator_equals_a_list_of_one_for_a_single_row(make_model):
    model = make_model()
    prompt = torch.tensor([[2, 5, 6]])
    shared = model.generate(prompt, max_new_tokens=5, generator=torch.Generator().manual_seed(4))
    listed = model.generate(prompt, max_new_tokens=5, generator=generators(4))
    assert torch.equal(shared, listed)


@pytest.mark.parametrize(
    ("order_temperature", "expected"), [(1.0, 0.71012), (0.0, 1.0), (0.5, None), (math.inf, 0.5)]
)
def test_learned_ranked_order_is_plackett_luce_in_the_reverse_exponents(
    make_model, order_temperature, expected
):
    # ê = 0.99417 / 0.40583 (see `two_position_model`): P(3 first) = ê_3^(1/τ) / (ê_3^(1/τ) + ê_4^(1/τ)); τ = 1 is
    # the exact sampler's 0.71012, τ = 0 always reveals the larger exponent first, τ = inf ignores ê.
    model = two_position_model(make_model)
    if expected is None:
        expected = 0.99417**2 / (0.99417**2 + 0.40583**2)  # τ = 0.5: 0.85714
    num_rows = 6000
    rate, ties = first_reveal_rate(
        model, num_rows, steps=None, seed=1, order="learned_ranked", order_temperature=order_temperature
    )
    assert ties == 0.0  # one reveal per pass
    standard_error = math.sqrt(max(expected * (1 - expected), 1e-4) / num_rows)
    assert abs(rate - expected) < 4 * standard_error, (rate, expected)


def test_learned_ranked_breaks_ties_at_random_not_left_to_right(make_model):
    # Equal exponents (`linear`: ê ≡ 1) leave the most likely order undecided: it must be a uniformly random one,
    # not the leftmost position first (that would be `left_to_right` in disguise).
    model = make_model(schedule="linear")
    rate, _ = first_reveal_rate(model, 4000, steps=None, seed=2, order="learned_ranked")
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / 4000), rate


@pytest.mark.parametrize(
    ("order", "heuristic"), [("confidence_learned", "confidence"), ("margin_learned", "margin")]
)
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_mixed_order_is_its_heuristic_at_weight_zero_and_the_learned_ranking_at_weight_inf(
    make_model, order, heuristic, temperature
):
    model = make_model()  # `lomdm`, randomised scheduler: ê differs between positions and between states
    prompt = torch.tensor([[2, 5, 6], [2, 7, 8], [2, 9, 9]])

    def run(**settings):
        out = model.generate(
            prompt,
            max_new_tokens=8,
            steps=4,
            temperature=temperature,
            return_dict_in_generate=True,
            output_order=True,
            generator=torch.Generator().manual_seed(3),
            **settings,
        )
        return out.sequences, out.order

    at_zero, plain = run(order=order, order_weight=0.0), run(order=heuristic)
    at_inf, ranked = (
        run(order=order, order_weight=math.inf),
        run(order="learned_ranked", order_temperature=0.0),
    )
    assert torch.equal(at_zero[0], plain[0]) and torch.equal(at_zero[1], plain[1])
    assert torch.equal(at_inf[0], ranked[0]) and torch.equal(at_inf[1], ranked[1])
    assert not torch.equal(plain[1], ranked[1])  # the two limits are different orders: both checks can fail


def test_mixed_order_swaps_two_positions_where_the_weighted_exponent_outweighs_the_score():
    # Two masked positions, one revealed: position 0 is more confident (0.9 vs 0.6), position 1 has the larger ê.
    # Standardised over two positions, log ê is -1 / +1, so the scores 0.9 - λ and 0.6 + λ cross at λ = 0.15.
    masked = torch.tensor([[True, True]])
    context = RevealContext(
        masked=masked,
        log_t=torch.zeros(1, dtype=torch.float64),
        step_index=0,
        num_steps=2,
        block_total=torch.tensor([2]),
        reverse_exponents=torch.tensor([[0.3, 0.8]]),
    )
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64)

    def sample(positions, u):
        return torch.zeros(int(positions.sum()), dtype=torch.long), probs[positions[0]]

    u = torch.full((1, 2, 2), 0.5, dtype=torch.float64)
    for weight, first in ((0.0, 0), (0.149, 0), (0.151, 1), (math.inf, 1)):
        revealed = build_reveal_rule("confidence_learned", {"order_weight": weight}).reveal(
            context, u, sample
        )
        assert revealed.positions[0].tolist() == [first == 0, first == 1], weight


def test_exact_sampler_reveals_first_in_proportion_to_reverse_exponents(make_model):
    model = two_position_model(make_model)
    canvas = torch.tensor([[10, 10, 10, MASK_ID, MASK_ID]])
    e_hat = model(canvas, noise_mask=canvas == MASK_ID).reverse_exponents[0, 3:]
    expected = (e_hat[0] / e_hat.sum()).item()
    assert expected == pytest.approx(0.71012, abs=1e-4)  # the docstring's hand computation
    num_rows = 6000
    rate, ties = first_reveal_rate(model, num_rows, steps=None, seed=0)
    assert ties == 0.0  # the exact sampler reveals one token per pass
    standard_error = math.sqrt(expected * (1 - expected) / num_rows)
    assert abs(rate - expected) < 4 * standard_error, (rate, expected)


def test_tau_grid_with_many_steps_matches_exact_first_reveal_statistics(make_model):
    model = two_position_model(make_model)
    num_rows = 3000
    exact, _ = first_reveal_rate(model, num_rows, steps=None, seed=1)
    grid, ties = first_reveal_rate(model, num_rows, steps=200, seed=2)
    grid_without_ties = grid / (1 - ties)
    assert ties < 0.02
    standard_error = math.sqrt(2 * exact * (1 - exact) / num_rows)
    assert abs(grid_without_ties - exact) < 4 * standard_error, (grid_without_ties, exact)


def test_tau_grid_step_reveals_at_unmask_prob_rate():
    # One step t = 1 -> s = 3/4 of a 4-step grid: P(reveal) = 1 - (3/4)**ê = 0.25 (ê = 1), 0.0827 (ê = 0.3).
    config = LoMDMGenerationConfig(order="learned", steps=4, mask_token_id=MASK_ID)
    sampler = LoMDMSampler(config, generator=torch.Generator().manual_seed(0))
    num_rows, vocab = 20000, 5
    sampler.initialize(
        torch.zeros(num_rows, 0, dtype=torch.long), torch.zeros(num_rows, 0, dtype=torch.long), 2
    )
    sampler.begin_block(0)
    e_hat = torch.tensor([1.0, 0.3]).expand(num_rows, 2)
    log_probs = torch.full((num_rows, 2, vocab), -math.log(vocab - 1)).index_fill(
        -1, torch.tensor([MASK_ID]), -math.inf
    )
    revealed = sampler.step(log_probs, e_hat).double().mean(0)
    expected = unmask_prob(torch.tensor(math.log(0.75)), torch.tensor(0.0), e_hat[0])
    assert expected.tolist() == pytest.approx([0.25, 0.0827], abs=1e-4)
    standard_error = (expected * (1 - expected) / num_rows).sqrt()
    assert ((revealed - expected).abs() < 4 * standard_error).all(), (revealed, expected)


@pytest.mark.parametrize("order", ["learned", "random", "confidence", "left_to_right"])
def test_infilling_never_changes_non_mask_tokens(make_model, order):
    model = make_model()
    text = torch.tensor([[2, 11, MASK_ID, MASK_ID, 12, 13, MASK_ID, 14]])
    out = model.generate(
        text,
        order=order,
        return_dict_in_generate=True,
        output_order=True,
        eos_token_id=[],
        generator=generators(0),
    )
    holes = text == MASK_ID
    assert torch.equal(out.sequences[~holes], text[~holes])
    assert not bool((out.sequences == MASK_ID).any())
    assert torch.equal(out.order >= 0, holes)


@pytest.mark.parametrize(("order", "steps", "extra"), SAMPLERS, ids=SAMPLER_IDS)
def test_prompt_kept_and_order_covers_exactly_generated_positions(make_model, order, steps, extra):
    model = make_model()
    prompt = torch.tensor([[2, 20, 21, 22], [PAD_ID, 2, 23, 24]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    out = model.generate(
        prompt,
        attention_mask=attention_mask,
        max_new_tokens=6,
        steps=steps,
        order=order,
        eos_token_id=[],
        return_dict_in_generate=True,
        output_order=True,
        **extra,
    )
    assert torch.equal(out.sequences[:, :4], prompt)
    assert torch.equal(out.order[:, :4], torch.full((2, 4), -1))
    assert bool((out.order[:, 4:] >= 0).all()) and bool((out.order[:, 4:] < out.nfe[:, None]).all())
    assert not bool((out.sequences == MASK_ID).any())


@pytest.mark.parametrize("order", ["learned", "random", "confidence", "left_to_right"])
@pytest.mark.parametrize("steps", [3, 8, 20])
def test_nfe_never_exceeds_steps(make_model, order, steps):
    out = make_model().generate(
        torch.tensor([[2, 5, 6]]),
        max_new_tokens=8,
        steps=steps,
        order=order,
        return_dict_in_generate=True,
        generator=generators(0),
    )
    assert 1 <= out.nfe.item() <= steps


def test_exact_sampler_takes_one_pass_per_token(make_model):
    out = make_model().generate(
        torch.tensor([[2, 5, 6]]),
        max_new_tokens=7,
        return_dict_in_generate=True,
        output_order=True,
        eos_token_id=[],
    )
    assert out.nfe.item() == 7
    assert sorted(out.order[0, 3:].tolist()) == list(range(7))


@pytest.mark.parametrize("order", ["learned", "random", "confidence"])
def test_cache_changes_nothing_but_nfe(make_model, order):
    model = make_model()
    prompt = torch.tensor([[PAD_ID, 2, 5], [2, 7, 8]])
    attention_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    settings = {
        "max_new_tokens": 5,
        "steps": 20,
        "order": order,
        "return_dict_in_generate": True,
        "output_order": True,
    }
    cached = model.generate(prompt, attention_mask=attention_mask, generator=generators(3, 4), **settings)
    uncached = model.generate(
        prompt, attention_mask=attention_mask, generator=generators(3, 4), use_cache=False, **settings
    )
    assert torch.equal(cached.sequences, uncached.sequences)
    assert (cached.nfe <= 5).all() and (uncached.nfe > 5).all()


def test_time_conditioned_model_gets_grid_time_at_every_pass(make_model):
    model = make_model(time_conditioning=True)
    seen = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["timesteps"].item()), with_kwargs=True
    )
    steps = 10
    out = model.generate(
        torch.tensor([[2, 5]]),
        max_new_tokens=3,
        steps=steps,
        order="learned",
        return_dict_in_generate=True,
        generator=generators(0),
    )
    assert len(seen) == out.nfe.item()  # no pass is reused: the backbone depends on t
    assert seen == pytest.approx([1 - k / steps for k in range(len(seen))], abs=1e-6)


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.puts: list[list[int]] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.flatten().tolist())

    def end(self) -> None:
        self.ended = True


def test_streamer_receives_every_revealed_token_once_in_reading_order(make_model):
    model = make_model(eos_token_id=None)
    streamer = RecordingStreamer()
    prompt = torch.tensor([[2, 5, 6]])
    out = model.generate(
        prompt, max_new_tokens=8, order="learned", streamer=streamer, generator=generators(0)
    )
    assert streamer.puts[0] == [2, 5, 6] and streamer.ended
    streamed = [token for put in streamer.puts[1:] for token in put]
    assert streamed == out[0, 3:].tolist()
    assert len(streamer.puts) > 2  # revealed out of order, streamed in several runs


def test_generated_positions_after_eos_become_padding(make_model):
    class ForceEos(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return torch.full_like(scores, -math.inf).index_fill(-1, torch.tensor([EOS_ID]), 0.0)

    model = make_model()
    out = model.generate(
        torch.tensor([[2, 5]]),
        max_new_tokens=6,
        steps=6,
        block_length=2,
        order="learned",
        logits_processor=LogitsProcessorList([ForceEos()]),
        return_dict_in_generate=True,
        output_order=True,
    )
    assert out.sequences[0].tolist() == [2, 5, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert out.order[0, 4:].tolist() == [-1, -1, -1, -1]  # the row stopped after its first block


def test_top_k_one_equals_greedy(make_model):
    model = make_model()
    prompt = torch.tensor([[2, 5, 6]])
    # Same seed, so the same positions are revealed at the same passes; only the token rule differs.
    greedy = model.generate(prompt, max_new_tokens=6, steps=6, temperature=0.0, generator=generators(9))
    top1 = model.generate(prompt, max_new_tokens=6, steps=6, top_k=1, generator=generators(9))
    assert torch.equal(greedy, top1)


def test_num_return_sequences_gives_independent_rows_per_prompt(make_model):
    model = make_model()
    out = model.generate(
        torch.tensor([[2, 5], [2, 6]]),
        max_new_tokens=6,
        num_return_sequences=3,
        generator=generators(*range(6)),
    )
    assert out.shape == (6, 8)
    assert torch.equal(out[:3, :2], torch.tensor([[2, 5]] * 3)) and torch.equal(
        out[3:, :2], torch.tensor([[2, 6]] * 3)
    )
    assert len({tuple(row) for row in out[:3, 2:].tolist()}) > 1


def test_diffusion_generate_accepts_dream_names(make_model):
    model = make_model()
    prompt = torch.tensor([[2, 5, 6]])
    dream = model.diffusion_generate(
        prompt,
        max_new_tokens=4,
        steps=4,
        alg="maskgit_plus",
        temperature=0.5,
        top_p=0.9,
        output_history=True,
        return_dict_in_generate=True,
        eos_token_id=[],
        generator=generators(1),
    )
    ours = model.generate(
        prompt,
        max_new_tokens=4,
        steps=4,
        order="confidence",
        temperature=0.5,
        top_p=0.9,
        eos_token_id=[],
        generator=generators(1),
    )
    assert torch.equal(dream.sequences, ours)
    assert len(dream.history) == 4 and torch.equal(dream.history[-1], ours)
    with pytest.raises(ValueError, match="alg"):
        model.diffusion_generate(prompt, max_new_tokens=4, alg="bogus")


def test_unconditional_generation_starts_from_bos(make_model):
    out = make_model().generate(max_new_tokens=5)
    assert out.shape == (1, 6) and out[0, 0].item() == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_beams": 2},
        {"do_sample": True, "temperature": 0},
        {"order": "bogus"},
        {"steps": 0},
        {"threshold": 0.5},
        {"temperature": -1.0},
        {"top_p": 1.5},
        {"output_order": True},
        {"generator": generators(1, 2, 3)},
        {"block_length": 4},
    ],
)
def test_bad_generate_argument_raises(make_model, kwargs):
    with pytest.raises(ValueError):
        make_model().generate(torch.tensor([[2, 5], [2, 6]]), max_new_tokens=6, **kwargs)


def test_bad_inputs_raise(make_model):
    model = make_model()
    with pytest.raises(ValueError, match="left padding"):
        model.generate(
            torch.tensor([[2, 5, PAD_ID]]), attention_mask=torch.tensor([[1, 1, 0]]), max_new_tokens=2
        )
    with pytest.raises(ValueError, match="nothing to generate"):
        model.generate(torch.tensor([[2, 5]]))
    limit = model.config.max_position_embeddings  # 64
    too_long = torch.full((1, limit + 6), 5)
    for length_setting in ({"max_length": limit}, {"max_new_tokens": 4}, {}):
        with pytest.raises(ValueError, match=r"prompt has 70 tokens.*max_position_embeddings=64"):
            model.generate(too_long, **length_setting)
    with pytest.raises(
        ValueError, match=r"60 columns.*10 new tokens is 70 positions.*max_position_embeddings=64"
    ):
        model.generate(torch.full((1, limit - 4), 5), max_new_tokens=10)
    with pytest.raises(ValueError, match="unknown"):
        LoMDMGenerationConfig(foo=1)
    with pytest.raises(ValueError, match=r"`order_temperature`.*order='learned'"):
        LoMDMGenerationConfig(order_temperature=0.5)  # the default order is not ranked
    for bad in (-0.1, float("nan"), True):
        with pytest.raises(ValueError, match=r"must be a number in \[0, inf\]"):
            LoMDMGenerationConfig(order="learned_ranked", order_temperature=bad)
    for bad in (-1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match=r"`order_weight` must be a number in \[0, inf\], got"):
            LoMDMGenerationConfig(order="margin_learned", order_weight=bad)
    with pytest.raises(ValueError, match=r"`order_weight` is a setting of order='confidence_learned' or"):
        LoMDMGenerationConfig(order="confidence", order_weight=1.0)


def test_generation_config_round_trips_as_lomdm_class(make_model, tmp_path):
    model = make_model()
    model.generation_config.update(steps=16, order="margin", top_k=5, block_length=4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "generation_config.json").is_file()
    shipped = {path.name for path in tmp_path.iterdir()}
    import hf_lomdm

    # Every Hub-facing file travels with the checkpoint (modeling imports the others, directly or not).
    remote = {path.name for path in Path(hf_lomdm.__file__).parent.glob("*_lomdm.py")}
    assert "reveal_lomdm.py" in remote and "cache_lomdm.py" in remote
    assert remote <= shipped  # the remote code travels with the checkpoint
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(loaded.generation_config) is LoMDMGenerationConfig
    assert loaded.generation_config == model.generation_config
    assert LoMDMGenerationConfig.from_pretrained(tmp_path).order == "margin"


def test_categorical_sampling_reaches_tail_only_in_float64():
    # p = (1 - 1e-12, 1e-12): u above 1 - 1e-12 must pick token 1; in float32 the CDF is 1.0 after token 0.
    scores = torch.tensor([[0.0, math.log(1e-12)]])
    assert sample_categorical(scores, torch.tensor([1.0 - 5e-13], dtype=torch.float64)).item() == 1
    assert sample_categorical(scores, torch.tensor([0.5], dtype=torch.float64)).item() == 0


def test_categorical_sampling_matches_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    num_draws = 20000
    u = 1.0 - torch.rand(num_draws, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draws = sample_categorical(probs.log().expand(num_draws, 4), u)
    frequencies = torch.bincount(draws, minlength=4).double() / num_draws
    assert frequencies[3] == 0  # a zero-probability token (like the mask under SUBS) is never drawn
    assert frequencies.tolist() == pytest.approx(probs.tolist(), abs=4 * math.sqrt(0.25 / num_draws))


def test_constrained_infilling_draws_only_allowed_tokens(make_model):
    # Infill the middle of "5 ? ? ? 9" with vowels only (ids 20-24 stand for them): every draw is one of them.
    model = make_model(schedule="lomdm")
    prompt = torch.tensor([[5, MASK_ID, MASK_ID, MASK_ID, 9]]).repeat(16, 1)
    allowed = torch.ones(5, 99, dtype=torch.bool)
    allowed[1:4] = False
    allowed[1:4, 20:25] = True
    for order in ("learned", "confidence"):
        out = model.generate(
            prompt, order=order, steps=2, allowed_tokens=allowed, generator=torch.Generator().manual_seed(0)
        )
        assert ((out[:, 1:4] >= 20) & (out[:, 1:4] < 25)).all() and (
            out[:, [0, 4]] == prompt[:, [0, 4]]
        ).all()
    with pytest.raises(ValueError, match="covers 4 positions"):
        model.generate(prompt, allowed_tokens=allowed[:4])


# A valid value other than the default for each setting only some orders take.
OPTION_VALUES = {"eps": 0.3, "threshold": 0.5, "order_temperature": 1.0, "order_weight": 0.5}


@pytest.mark.parametrize("order", sorted(REVEAL_RULES))
@pytest.mark.parametrize("option", sorted(REVEAL_OPTIONS))
def test_config_accepts_an_order_option_exactly_when_the_rule_declares_it(order, option):
    settings = {"order": order, option: OPTION_VALUES[option]}
    if option in REVEAL_RULES[order].options:
        assert getattr(LoMDMGenerationConfig(**settings), option) == OPTION_VALUES[option]
    else:
        with pytest.raises(ValueError, match=rf"`{option}` is a setting of order=.*got order='{order}'"):
            LoMDMGenerationConfig(**settings)
    LoMDMGenerationConfig(
        order=order, **{option: REVEAL_OPTIONS[option].default}
    )  # the default is always fine


def test_config_and_reveal_rules_never_import_the_sampler():
    # config -> reveal rules and sampler -> reveal rules, never back: no import cycle between the three.
    import ast
    import pathlib

    import hf_lomdm

    root = pathlib.Path(hf_lomdm.__file__).parent
    imported = {}
    for name in ("generation_config_lomdm", "reveal_lomdm", "sampler_lomdm"):
        tree = ast.parse((root / f"{name}.py").read_text())
        imported[name] = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "sampler_lomdm" not in imported["generation_config_lomdm"] | imported["reveal_lomdm"]
    assert "generation_config_lomdm" not in imported["reveal_lomdm"]
    assert (
        "reveal_lomdm" in imported["generation_config_lomdm"] and "reveal_lomdm" in imported["sampler_lomdm"]
    )


@pytest.mark.parametrize("order", sorted(REVEAL_RULES))
@pytest.mark.parametrize("num_steps", [None, 3])
def test_reveal_rules_return_masked_positions_without_writing_their_inputs(order, num_steps):
    gen = torch.Generator().manual_seed(0)
    batch, length, vocab = 3, 7, 11
    masked = torch.rand(batch, length, generator=gen) < 0.6
    masked[:, 0] = True
    context = RevealContext(
        masked=masked,
        log_t=torch.full((batch,), -0.1, dtype=torch.float64),
        step_index=1,
        num_steps=num_steps,
        block_total=masked.sum(-1) + 1,
        reverse_exponents=0.2 + torch.rand(batch, length, generator=gen),
    )
    before = {name: value.clone() for name, value in vars(context).items() if isinstance(value, torch.Tensor)}
    log_probs = torch.randn(batch, length, vocab, generator=gen).log_softmax(-1)

    def sample(positions, u):
        probs = log_probs[positions].double().exp()
        return sample_categorical(log_probs[positions], u[positions], probs), probs

    u = 1.0 - torch.rand(batch, length, 2, generator=gen, dtype=torch.float64)
    settings = {name: OPTION_VALUES[name] for name in REVEAL_RULES[order].options}
    revealed = build_reveal_rule(order, settings).reveal(context, u, sample)
    assert bool((revealed.positions <= masked).all()) and bool(revealed.positions.any())
    assert revealed.tokens.shape == (int(revealed.positions.sum()),)
    for name, value in before.items():
        assert torch.equal(getattr(context, name), value), name


def test_reveal_pass_is_also_readable_as_order(make_model):
    out = make_model().generate(
        torch.tensor([[2, 5]]), max_new_tokens=4, return_dict_in_generate=True, output_order=True
    )
    assert out.order is out.reveal_pass and sorted(out.reveal_pass[0, 2:].tolist()) == [0, 1, 2, 3]


REMOTE_GENERATE = """
import sys
sys.modules["hf_lomdm"] = None  # the package cannot be imported in this process
import torch
from transformers import AutoModelForMaskedLM
model = AutoModelForMaskedLM.from_pretrained({folder!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
outputs = [
    model.generate(torch.tensor([[2, 5, 6]]), generator=torch.Generator().manual_seed(0), **settings)
    for settings in {settings!r}
]
torch.save(outputs, {out!r})
"""


def test_remote_code_generates_like_the_package_for_every_order_and_cache(make_model, tmp_path):
    import os
    import subprocess
    import sys

    model = make_model()
    model.save_pretrained(tmp_path / "ckpt")
    settings = [
        {"order": order, "max_new_tokens": 6, "steps": 3, **{n: OPTION_VALUES[n] for n in rule.options}}
        for order, rule in REVEAL_RULES.items()
    ]
    settings += [
        {"order": "learned", "max_new_tokens": 6, "block_length": 2, "cache_implementation": name}
        for name in ("prefix", "dual")
    ]
    script = REMOTE_GENERATE.format(
        folder=str(tmp_path / "ckpt"), settings=settings, out=str(tmp_path / "out.pt")
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for remote, kwargs in zip(torch.load(tmp_path / "out.pt"), settings):
        local = model.generate(
            torch.tensor([[2, 5, 6]]), generator=torch.Generator().manual_seed(0), **kwargs
        )
        assert torch.equal(remote, local), kwargs
