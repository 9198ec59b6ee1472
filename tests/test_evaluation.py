"""NELBO perplexity bound and generative perplexity."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutput

from hf_lomdm.evaluation import generative_perplexity, nelbo_perplexity, unigram_entropy
from hf_lomdm.objective import lomdm_loss


def _sequences(n=6, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 99, (length - i % 3,), generator=generator).tolist() for i in range(n)]


def test_nelbo_evaluator_equals_averaging_lomdm_loss_on_tiled_batches():
    model = tiny_model()
    data = [torch.randint(4, 99, (10,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(3)]
    result = nelbo_perplexity(model, data, time_samples=4, batch_size=12, generator=torch.Generator().manual_seed(0))
    # the same computation by hand: the 3 sequences tiled 4 times in one batch (equal lengths: no padding)
    tiled = torch.tensor(data).repeat(4, 1)
    with torch.no_grad():
        res = lomdm_loss(model, tiled, num_samples=1, estimator="plain", generator=torch.Generator().manual_seed(0))
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
        reference = [lomdm_loss(model, rows, attention_mask, num_samples=1, estimator="plain",
                                generator=torch.Generator().manual_seed(100 + i)) for i in range(200)]
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
    result = nelbo_perplexity(model, _sequences(), time_samples=16, include_uniform_eps=True,
                              generator=torch.Generator().manual_seed(0))
    assert result.nelbo_uniform_eps < result.nelbo  # truncation drops most of the small-exponent tokens' weight
    assert result.ppl_uniform_eps == pytest.approx(math.exp(result.nelbo_uniform_eps))


def test_overlong_sequence_is_refused_not_truncated():
    with pytest.raises(ValueError, match="max_length=64"):
        nelbo_perplexity(tiny_model(), [list(range(4, 74))])


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
    samples = torch.multinomial(probs, 4000 * 16, replacement=True, generator=generator).view(16, 4000).tolist()
    result = generative_perplexity(token_ids=samples, judge=UnigramJudge(probs))
    true_entropy = float(-(probs * probs.log()).sum())
    assert result.gen_ppl == pytest.approx(math.exp(true_entropy), rel=0.02)
    assert result.entropy == pytest.approx(true_entropy, rel=0.02)  # plug-in bias ~ (V-1)/(2n) is tiny here
    assert len(result.per_sample_entropy) == 16


def test_generative_perplexity_with_a_tiny_llama_judge_is_finite_and_padding_free():
    torch.manual_seed(0)
    judge = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=64)).eval()
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
    direct = nelbo_perplexity(model, texts, tokenizer=IdTokenizer(), time_samples=4,
                              generator=torch.Generator().manual_seed(3))
    assert nelbo["nelbo"] == pytest.approx(direct.nelbo) and nelbo["ppl_bound"] == pytest.approx(direct.ppl_bound)


def test_lomdm_eval_cli_reports_bound_and_generation_quality(tmp_path):
    import json

    from test_lm_eval import word_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_lomdm.eval import main

    tokenizer = word_tokenizer()
    model = tiny_model(schedule="lomdm", vocab_size=len(tokenizer), max_position_embeddings=8)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    judge = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    judge.save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")
    text = tmp_path / "unseen.txt"
    text.write_text(" ".join(["the cat sat on the mat ."] * 12))
    report = main([str(tmp_path / "ckpt"), "--text_file", str(text), "--time_samples", "4", "--include_uniform_eps",
                   "--generate", "2", "--steps", "4", "--judge", str(tmp_path / "judge"),
                   "--output", str(tmp_path / "report.json")])
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    nelbo = report["nelbo"]
    assert nelbo["num_sequences"] > 1 and nelbo["ppl_bound"] == pytest.approx(math.exp(nelbo["nelbo"]))
    assert nelbo["ppl_uniform_eps"] is not None
    for order in ("learned", "random"):
        generation = report["generation"][order]
        assert math.isfinite(generation["gen_ppl"]) and generation["nfe"] <= 4
