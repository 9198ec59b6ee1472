"""`LoMDMForMaskedDiffusion.from_causal_lm` and `lomdm-convert`: exact weights, exact log-probs, clear errors."""

from __future__ import annotations

import pytest
import torch
from helpers import CAUSAL_LM_VOCAB, tiny_causal_lm
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion
from hf_lomdm.cli.convert import main as convert_main
from hf_lomdm.modeling_lomdm import shift_right, subs_log_probs
from hf_lomdm.objective import lomdm_loss

VOCAB = CAUSAL_LM_VOCAB


def word_tokenizer(with_mask: bool = False) -> PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"bos_token": "w1", "eos_token": "w2", "unk_token": "w0"}
    if with_mask:
        special["mask_token"] = "w3"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def causal_mask(batch: int, length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()[None, None].expand(batch, 1, length, length)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("tie", [True, False])
def test_shifted_conversion_with_a_causal_mask_reproduces_the_causal_lm(kind, attn, tie):
    source = tiny_causal_lm(kind, tie_word_embeddings=tie)
    model = LoMDMForMaskedDiffusion.from_causal_lm(source, schedule="lomdm")
    model.config._attn_implementation = attn
    x = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = torch.log_softmax(source(x).logits.float(), dim=-1)  # (B, L, V): next-token log-probs
        features = model.model(x, attention_mask=causal_mask(*x.shape)).last_hidden_state
        # Every position masked: SUBS is zero-masking only, i.e. a softmax over the source vocabulary.
        all_masked = torch.full_like(x, model.config.mask_token_id)
        log_probs = subs_log_probs(
            model.lm_head(shift_right(features)), all_masked, model.config.mask_token_id
        )
    assert model.config.shift and model.config.num_key_value_heads == 2
    torch.testing.assert_close(log_probs[:, 1:, :VOCAB], reference[:, :-1], atol=1e-5, rtol=1e-5)
    assert torch.isneginf(log_probs[..., model.config.mask_token_id]).all()
    # `forward` (bidirectional) reads the prediction for position i from hidden state i - 1 as well.
    z = x.masked_fill(
        torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5, model.config.mask_token_id
    )
    with torch.no_grad():
        features = model.model(z).last_hidden_state
        expected = subs_log_probs(model.lm_head(shift_right(features)), z, model.config.mask_token_id)
        torch.testing.assert_close(model(z).logits, expected)


def test_weights_are_copied_one_to_one_and_the_mask_row_is_the_mean_embedding():
    source = tiny_causal_lm("qwen2", tie_word_embeddings=False)
    tokenizer = word_tokenizer()
    model = LoMDMForMaskedDiffusion.from_causal_lm(source, tokenizer=tokenizer)
    assert (
        tokenizer.mask_token == "<|mask|>" and tokenizer.mask_token_id == VOCAB == model.config.mask_token_id
    )
    assert model.config.vocab_size == VOCAB + 1
    ours = model.state_dict()
    for name, tensor in source.state_dict().items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[name][:VOCAB], tensor)
            torch.testing.assert_close(ours[name][VOCAB], tensor.mean(0))
        elif "rotary_emb" not in name:
            assert torch.equal(ours[name], tensor), name
    for layer in model.model.layers:  # Qwen2 has no o-projection bias: zero keeps the function unchanged
        assert torch.equal(layer.self_attn.o_proj.bias, torch.zeros_like(layer.self_attn.o_proj.bias))
    assert model.config.rope_theta == 500.0 and model.config.attention_bias


def test_existing_mask_token_is_used_and_the_vocabulary_kept():
    tokenizer = word_tokenizer(with_mask=True)
    model = LoMDMForMaskedDiffusion.from_causal_lm(tiny_causal_lm(), tokenizer=tokenizer, shift=False)
    assert model.config.mask_token_id == 3 and model.config.vocab_size == VOCAB and not model.config.shift
    assert len(tokenizer) == VOCAB


def test_converted_model_trains_saves_and_reloads(tmp_path):
    model = LoMDMForMaskedDiffusion.from_causal_lm(
        tiny_causal_lm(), schedule="lomdm", max_position_embeddings=16, c1=0.8
    )
    assert model.config.max_position_embeddings == 16 and model.config.c1 == 0.8
    x = torch.randint(4, VOCAB, (2, 16))
    res = lomdm_loss(model.train(), x, generator=torch.Generator().manual_seed(0))
    res.loss.backward()
    assert torch.isfinite(res.loss) and model.forward_scheduler.score_proj.weight.grad is not None
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    z = x.clone()
    z[:, 5:9] = model.config.mask_token_id
    with torch.no_grad():
        torch.testing.assert_close(reloaded(z).logits, model.eval()(z).logits)
    assert reloaded.config.shift and reloaded.config.num_key_value_heads == 2


def test_lomdm_convert_cli_saves_model_tokenizer_and_generation_config(tmp_path):
    source_dir, out = tmp_path / "causal", tmp_path / "lomdm"
    tiny_causal_lm().save_pretrained(source_dir)
    word_tokenizer().save_pretrained(source_dir)
    convert_main([str(source_dir), str(out), "--schedule", "per_position", "--max_position_embeddings", "32"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert tokenizer.mask_token_id == model.config.mask_token_id == VOCAB
    assert model.config.schedule == "per_position" and model.config.max_position_embeddings == 32
    assert (out / "generation_config.json").exists() and tokenizer.model_max_length == 32
    sequences = model.generate(
        torch.tensor([[1, 7]]), max_new_tokens=4, steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert sequences.shape == (1, 6) and (sequences != VOCAB).all()


@pytest.mark.parametrize("value", ["0", "-3", "1.5"])
def test_lomdm_convert_refuses_a_non_positive_length_before_loading(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # the source does not exist: parsing fails first
        convert_main([str(tmp_path / "missing"), str(tmp_path / "out"), "--max-position-embeddings", value])
    assert exit_info.value.code == 2
    assert f"must be an integer >= 1, got {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make_source", "overrides", "message"),
    [
        (
            lambda: GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB)),
            {},
            "model_type='gpt2'",
        ),
        (
            lambda: tiny_causal_lm(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
            {},
            "rope_type",
        ),
        (lambda: tiny_causal_lm(hidden_act="gelu"), {}, "hidden_act"),
        (lambda: tiny_causal_lm(mlp_bias=True), {}, "mlp_bias"),
        (lambda: tiny_causal_lm(head_dim=16), {}, "head_dim"),
        (
            lambda: tiny_causal_lm("qwen2", use_sliding_window=True, sliding_window=8),
            {},
            "use_sliding_window",
        ),
        (tiny_causal_lm, {"hidden_size": 64}, "cannot be overridden"),
        (tiny_causal_lm, {"c1": 0.5, "c2": 0.6}, "c1"),
    ],
)
def test_unsupported_sources_and_overrides_raise_value_error(make_source, overrides, message):
    with pytest.raises(ValueError, match=message):
        LoMDMForMaskedDiffusion.from_causal_lm(make_source(), **overrides)


def test_not_a_model_raises_value_error():
    with pytest.raises(ValueError, match="causal LM or a path"):
        LoMDMForMaskedDiffusion.from_causal_lm(42)


def test_grouped_query_heads_must_divide_query_heads():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        LoMDMConfig(
            vocab_size=10, hidden_size=32, num_attention_heads=4, num_key_value_heads=3, intermediate_size=8
        )
