"""NELBO perplexity bound, context use and generative perplexity."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutput

from hf_lomdm.evaluation import context_use, generative_perplexity, nelbo_perplexity, unigram_entropy
from hf_lomdm.objective import lomdm_loss


def _sequences(n=6, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 99, (length - i % 3,), generator=generator).tolist() for i in range(n)]


def test_nelbo_evaluator_equals_averaging_lomdm_loss_on_tiled_batches():
    model = tiny_model()
    data = [
        torch.randint(4, 99, (10,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(3)
    ]
    result = nelbo_perplexity(
        model, data, time_samples=4, batch_size=12, generator=torch.Generator().manual_seed(0)
    )
    # the same computation by hand: the 3 sequences tiled 4 times in one batch (equal lengths: no padding)
    tiled = torch.tensor(data).repeat(4, 1)
    with torch.no_grad():
        res = lomdm_loss(
            model, tiled, num_samples=1, estimator="plain", generator=torch.Generator().manual_seed(0)
        )
    assert result.nelbo == pytest.approx(res.nelbo.sum().item() / res.num_tokens.sum().item(), rel=1e-6)
    assert result.ppl_bound == pytest.approx(math.exp(result.nelbo))
    assert result.num_tokens == 30 and result.num_sequences == 3


def test_nelbo_evaluator_matches_many_sample_average_within_standard_error():
    model = tiny_model(schedule="per_position")
    data = _sequences()
    result = nelbo_perplexity(model, data, time_samples=16, generator=torch.Generator().manual_seed(1))
    rows = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in data], batch_first=True, padding_value=1)
    attention_mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(s)) for s in data], batch_first=True)
    with torch.no_grad():
        reference = [
            lomdm_loss(
                model,
                rows,
                attention_mask,
                num_samples=1,
                estimator="plain",
                generator=torch.Generator().manual_seed(100 + i),
            )
            for i in range(200)
        ]
    ref = sum(r.nelbo.sum().item() for r in reference) / (200 * attention_mask.sum().item())
    assert abs(result.nelbo - ref) < 5 * result.stderr


def test_nelbo_standard_error_shrinks_like_one_over_sqrt_k():
    model = tiny_model()
    data = _sequences(n=8)
    few = nelbo_perplexity(model, data, time_samples=4, generator=torch.Generator().manual_seed(0))
    many = nelbo_perplexity(model, data, time_samples=64, generator=torch.Generator().manual_seed(0))
    assert 2.0 < few.stderr / many.stderr < 8.0  # sqrt(64 / 4) = 4


def test_uniform_eps_estimate_reported_beside_the_bound():
    model = tiny_model(schedule="per_position", c1=0.1, c2=0.09)
    result = nelbo_perplexity(
        model,
        _sequences(),
        time_samples=16,
        include_uniform_eps=True,
        generator=torch.Generator().manual_seed(0),
    )
    # truncation drops most of the small-exponent tokens' weight
    assert result.nelbo_uniform_eps < result.nelbo
    assert result.ppl_uniform_eps == pytest.approx(math.exp(result.nelbo_uniform_eps))


def test_overlong_sequence_is_refused_not_truncated():
    with pytest.raises(ValueError, match="max_length=64"):
        nelbo_perplexity(tiny_model(), [list(range(4, 74))])


class FixedLogits(nn.Module):
    """An output head that ignores its input: the same logits at every position (a unigram-level denoiser)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, hidden_states):
        return self.logits.expand(*hidden_states.shape[:-1], -1).clone()  # SUBS writes into the logits


def _unigram_level_model():
    model = tiny_model()
    model.lm_head = FixedLogits(
        torch.randn(model.config.vocab_size, generator=torch.Generator().manual_seed(0))
    )
    return model


def test_context_ratio_is_one_when_the_denoiser_ignores_context():
    data = _sequences(n=5, length=14)
    # 3 of 12-14 positions per row are scored for "one"; the ratio pairs them with the same tokens under "all"
    result = context_use(
        _unigram_level_model(), data, positions_per_row=3, generator=torch.Generator().manual_seed(0)
    )
    assert result.ratio == pytest.approx(1.0, abs=1e-12)
    for label in ("15%", "50%", "85%"):  # a random subset of the same tokens: equal within its standard error
        assert abs(result.loss[label] - result.loss["all"]) < 4 * result.stderr[label]
    # every position scored: "one" and "all" score the very same tokens
    every = context_use(
        _unigram_level_model(), data, positions_per_row=64, generator=torch.Generator().manual_seed(0)
    )
    assert every.loss["one"] == pytest.approx(every.loss["all"], rel=1e-12)
    assert every.num_tokens["one"] == every.num_tokens["all"] == sum(len(s) for s in data)


class CopyVisibleToken(nn.Module):
    """A denoiser for constant rows: 0.9 on the row's visible token, uniform over the rest when none is visible."""

    def __init__(self, vocab_size=20, mask_id=0):
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=mask_id, pad_token_id=1, max_position_embeddings=64)
        self.is_time_conditioned = False
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.zeros(()))  # for the device

    def forward(self, z, attention_mask=None, noise_mask=None, timesteps=None, output_exponents=True):
        mask_id = self.config.mask_token_id
        visible = (z != mask_id) & attention_mask.bool()
        token = torch.where(visible, z, -1).max(-1).values  # (B,) a visible token, -1 if none
        probs = torch.full((*z.shape, self.vocab_size), 1.0 / (self.vocab_size - 1))
        probs[..., mask_id] = 0.0
        copy = torch.full((self.vocab_size,), 0.1 / (self.vocab_size - 2))
        copy[mask_id] = 0.0
        for b in range(z.shape[0]):
            if token[b] >= 0:
                probs[b] = copy.clone().index_fill_(0, token[b], 0.9)
        return SimpleNamespace(logits=probs.log())


def test_context_ratio_is_small_when_the_denoiser_copies_visible_tokens():
    data = [[7] * 10, [9] * 6]
    result = context_use(CopyVisibleToken(), data, generator=torch.Generator().manual_seed(0))
    assert result.loss["one"] == pytest.approx(-math.log(0.9))  # the other tokens are visible
    # nothing visible: uniform over the 19 tokens that are not the mask
    assert result.loss["all"] == pytest.approx(math.log(19))
    assert result.ratio == pytest.approx(-math.log(0.9) / math.log(19))  # ~0.036


def test_context_use_keys_and_token_counts():
    data = [
        {"input_ids": list(range(4, 24)), "labels": [-100] * 5 + list(range(9, 24))},  # |M| = 15
        torch.arange(30, 40).tolist(),  # |M| = 10
    ]
    result = context_use(tiny_model(), data, positions_per_row=4, generator=torch.Generator().manual_seed(0))
    labels = ["one", "15%", "50%", "85%", "all"]
    assert list(result.loss) == list(result.stderr) == list(result.num_tokens) == labels
    # round(f * |M|), at least one: 15% -> 2 + 2, 50% -> 8 + 5, 85% -> 13 + 8 (round half to even: 12.75 -> 13)
    assert result.num_tokens == {"one": 8, "15%": 4, "50%": 13, "85%": 21, "all": 25}
    assert result.num_sequences == 2 and 0 < result.ratio < 2 and result.ratio_stderr >= 0
    assert json.loads(json.dumps(result.to_dict()))["loss"].keys() == result.loss.keys()
    only = context_use(tiny_model(), data, fractions=(0.5,), generator=torch.Generator().manual_seed(0))
    assert list(only.loss) == ["50%"] and only.ratio is None and only.ratio_stderr is None
    many = context_use(
        tiny_model(), _sequences(n=10), max_sequences=3, generator=torch.Generator().manual_seed(0)
    )
    assert many.num_sequences == 3
    with pytest.raises(ValueError, match="'one', 'all' or a float"):
        context_use(tiny_model(), data, fractions=("one", 1.5))


def test_context_use_is_deterministic_under_a_generator():
    model, data = tiny_model(), _sequences()
    first = context_use(model, data, batch_size=4, generator=torch.Generator().manual_seed(3)).to_dict()
    second = context_use(model, data, batch_size=4, generator=torch.Generator().manual_seed(3)).to_dict()
    other = context_use(model, data, batch_size=4, generator=torch.Generator().manual_seed(4)).to_dict()
    assert first == second and first["loss"]["50%"] != other["loss"]["50%"]
    # no randomness when everything is masked
    assert first["loss"]["all"] == pytest.approx(other["loss"]["all"])


def test_context_use_runs_with_a_time_conditioned_backbone():
    result = context_use(
        tiny_model(schedule="linear", time_conditioning=True),
        _sequences(n=3),
        generator=torch.Generator().manual_seed(0),
    )
    assert all(math.isfinite(loss) for loss in result.loss.values())


def test_unigram_entropy_known_values():
    assert unigram_entropy([7, 7, 7]) == 0.0
    assert unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))


class UnigramJudge(nn.Module):
    """A causal 'LM' that ignores context: log p(token) = log probs[token]."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.log_probs = nn.Parameter(probs.log(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return CausalLMOutput(logits=self.log_probs.expand(*input_ids.shape, -1))


def test_judge_equal_to_data_distribution_gives_gen_ppl_exp_entropy():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(20, generator=generator), 0)
    samples = (
        torch.multinomial(probs, 4000 * 16, replacement=True, generator=generator).view(16, 4000).tolist()
    )
    result = generative_perplexity(token_ids=samples, judge=UnigramJudge(probs))
    true_entropy = float(-(probs * probs.log()).sum())
    assert result.gen_ppl == pytest.approx(math.exp(true_entropy), rel=0.02)
    assert result.entropy == pytest.approx(true_entropy, rel=0.02)  # plug-in bias ~ (V-1)/(2n) is tiny here
    assert len(result.per_sample_entropy) == 16


def test_generative_perplexity_with_a_tiny_llama_judge_is_finite_and_padding_free():
    torch.manual_seed(0)
    judge = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
        )
    ).eval()
    samples = [[3, 4, 5, 6, 7], [8, 9, 10]]
    together = generative_perplexity(token_ids=samples, judge=judge)
    alone = [generative_perplexity(token_ids=[s], judge=judge) for s in samples]
    assert math.isfinite(together.gen_ppl) and together.num_tokens == 4 + 2
    expected_nll = sum(a.nll * a.num_tokens for a in alone) / together.num_tokens
    assert together.nll == pytest.approx(expected_nll, rel=1e-5)  # right padding changes nothing


def test_generative_perplexity_bad_arguments():
    judge = UnigramJudge(torch.full((5,), 0.2))
    with pytest.raises(ValueError, match="exactly one"):
        generative_perplexity(judge=judge)
    with pytest.raises(ValueError, match="judge_tokenizer"):
        generative_perplexity(["hello"], judge=judge)


def test_evaluate_metric_modules_load_offline_and_agree_with_functions():
    import evaluate

    from hf_lomdm.metrics import metric_path

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(20, generator=generator), 0)
    judge = UnigramJudge(probs)

    class CharTokenizer:  # one token per character, ids 0..19
        bos_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) - ord("a") for c in text]}

    texts = ["abcabcabd", "hgfedcbaa"]
    gen = evaluate.load(metric_path("generative_perplexity")).compute(
        predictions=texts, judge=judge, judge_tokenizer=CharTokenizer()
    )
    direct = generative_perplexity(texts, judge=judge, judge_tokenizer=CharTokenizer())
    assert gen["gen_ppl"] == pytest.approx(direct.gen_ppl) and gen["entropy"] == pytest.approx(direct.entropy)

    model = tiny_model()

    class IdTokenizer:  # "5 17 42" -> [5, 17, 42]
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [int(tok) for tok in text.split()]}

    texts = ["5 17 42 9 11", "8 8 9 30"]
    nelbo = evaluate.load(metric_path("nelbo_perplexity")).compute(
        predictions=texts, model=model, tokenizer=IdTokenizer(), time_samples=4, seed=3
    )
    direct = nelbo_perplexity(
        model, texts, tokenizer=IdTokenizer(), time_samples=4, generator=torch.Generator().manual_seed(3)
    )
    assert nelbo["nelbo"] == pytest.approx(direct.nelbo) and nelbo["ppl_bound"] == pytest.approx(
        direct.ppl_bound
    )
