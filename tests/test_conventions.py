"""transformers conventions a user relies on: `forward(labels=...)`, `do_sample`, the text-generation and fill-mask
pipelines on a saved folder, BOS from the tokenizer (old tokenizers included), other samplers' argument names, and
LoRA with frozen schedulers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset
from helpers import MASK_ID, tiny_model
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoTokenizer, pipeline

from hf_lomdm import LoMDMGenerationConfig
from hf_lomdm.data import group_texts, prompt_response_rows, train_bpe_tokenizer, train_char_tokenizer
from hf_lomdm.generation_config_lomdm import SETTING_ALIASES
from hf_lomdm.lora import lomdm_lora_config
from hf_lomdm.objective import lomdm_loss
from hf_lomdm.parameter_groups import scheduler_modules

TEXTS = ["the cat sat on the mat.", "a dog ran in the park."]
BOS = 2


def _generate(model, prompt, seed=0, method="generate", **kwargs):
    """`model.generate` (or `method`) with 6 new tokens in 6 steps, no EOS, and a seeded generator."""
    defaults = {} if "gen_length" in kwargs else {"max_new_tokens": 6}
    kwargs = {**defaults, "steps": 6, "eos_token_id": [], **kwargs}
    return getattr(model, method)(prompt, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A tiny model and a character tokenizer built by `hf_lomdm.data`, saved as one folder."""
    tokenizer = train_char_tokenizer(TEXTS)
    folder = tmp_path_factory.mktemp("saved")
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# -- forward -------------------------------------------------------------------------------------------------


def test_forward_with_labels_raises_and_says_how_to_get_the_loss():
    model = tiny_model()
    input_ids = torch.tensor([[2, 5, MASK_ID, 7]])
    with pytest.raises(ValueError, match=r"hf_lomdm\.objective\.lomdm_loss"):
        model(input_ids, labels=torch.tensor([[2, 5, 6, 7]]))


def test_forward_rejects_unknown_keywords_and_attention_weights():
    model = tiny_model()
    input_ids = torch.tensor([[2, 5, MASK_ID, 7]])
    with pytest.raises(TypeError, match="inputs_embeds"):
        model(input_ids, inputs_embeds=None)
    with pytest.raises(ValueError, match="output_attentions"):
        model(input_ids, output_attentions=True)


def test_forward_accepts_the_keywords_tokenizers_and_transformers_pass():
    model = tiny_model()
    input_ids = torch.tensor([[2, 5, MASK_ID, 7]])
    expected = model(input_ids)
    same = model(
        input_ids, token_type_ids=torch.zeros_like(input_ids), output_attentions=False, return_dict=True
    )
    torch.testing.assert_close(same.logits, expected.logits, atol=0, rtol=0)
    as_tuple = model(input_ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], expected.logits, atol=0, rtol=0)


# -- do_sample -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["confidence", "learned"])
def test_do_sample_false_is_greedy_whatever_the_temperature(order):
    model = tiny_model()
    prompt = torch.tensor([[2, 5, 6]])
    greedy = _generate(model, prompt, order=order, temperature=0)
    for seed, temperature in ((1, 0.7), (2, 1.0)):
        out = _generate(
            model, prompt, seed=seed, order=order, do_sample=False, temperature=temperature, top_k=5
        )
        assert torch.equal(out, _generate(model, prompt, seed=seed, order=order, temperature=0, top_k=5))
    if order == "confidence":  # positions by confidence, tokens by argmax: nothing left to chance
        assert torch.equal(_generate(model, prompt, seed=3, order=order, do_sample=False), greedy)


def test_do_sample_true_samples_at_the_temperature():
    model = tiny_model()
    prompt = torch.tensor([[2, 5, 6]])
    sampled = _generate(model, prompt, do_sample=True, temperature=0.7)
    assert torch.equal(sampled, _generate(model, prompt, temperature=0.7))
    draws = {
        tuple(_generate(model, prompt, seed=s, do_sample=True, order="confidence")[0].tolist())
        for s in range(4)
    }
    assert len(draws) > 1


@pytest.mark.parametrize("kwargs", [{"do_sample": True, "temperature": 0}, {"do_sample": "yes"}])
def test_bad_do_sample_raises(kwargs):
    with pytest.raises(ValueError, match="do_sample"):
        LoMDMGenerationConfig(mask_token_id=MASK_ID, **kwargs)


def test_do_sample_is_saved_with_the_generation_config(tmp_path):
    LoMDMGenerationConfig(mask_token_id=MASK_ID, do_sample=False).save_pretrained(tmp_path)
    assert LoMDMGenerationConfig.from_pretrained(tmp_path).greedy


# -- pipelines -----------------------------------------------------------------------------------------------


def test_text_generation_pipeline_on_a_saved_folder(saved_folder):
    generator = pipeline("text-generation", model=str(saved_folder))
    tokenizer = generator.tokenizer
    settings = {"max_new_tokens": 5, "order": "confidence", "do_sample": False}  # deterministic
    greedy = generator("the ca", **settings)[0]["generated_text"]
    assert greedy == generator("the ca", **settings)[0]["generated_text"]
    ids = generator.model.generate(tokenizer("the ca", return_tensors="pt").input_ids, **settings)
    assert greedy == tokenizer.decode(ids[0], skip_special_tokens=True)
    assert greedy.startswith("the ca")
    sampled = generator("the ca", max_new_tokens=5, num_return_sequences=2, return_full_text=False)
    assert len(sampled) == 2 and all(isinstance(row["generated_text"], str) for row in sampled)
    with pytest.raises(ValueError, match="stop_strings"):  # the pipeline's stop_sequence has no equivalent
        generator("the ca", max_new_tokens=5, stop_sequence="t")


def test_fill_mask_pipeline_scores_are_the_model_probabilities(saved_folder):
    fill = pipeline("fill-mask", model=str(saved_folder))
    tokenizer, model = fill.tokenizer, fill.model
    text = f"the c{tokenizer.mask_token}t"
    results = fill(text, top_k=3)
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    position = int((input_ids[0] == tokenizer.mask_token_id).nonzero())
    with torch.no_grad():
        probs = model(input_ids).logits[0, position].exp()
    top = probs.topk(3)
    assert [row["token"] for row in results] == top.indices.tolist()
    torch.testing.assert_close(
        torch.tensor([row["score"] for row in results]), top.values, atol=1e-6, rtol=1e-5
    )
    assert all(row["sequence"].startswith("the c") for row in results)


# -- BOS from the tokenizer ------------------------------------------------------------------------------------


def _without_post_processor(tokenizer, folder):
    """The tokenizer as checkpoints saved before the post-processor existed load it."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    data["post_processor"] = None
    path.write_text(json.dumps(data))
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("build", [train_char_tokenizer, lambda texts: train_bpe_tokenizer(texts * 20, 300)])
def test_tokenizer_adds_one_bos_and_the_saved_folder_keeps_it(build, tmp_path):
    tokenizer = build(TEXTS)
    bare = tokenizer("the cat", add_special_tokens=False).input_ids
    assert tokenizer("the cat").input_ids == [tokenizer.bos_token_id, *bare]
    assert tokenizer.bos_token_id == BOS and BOS not in bare
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("the cat").input_ids == [BOS, *bare]
    prompt, response = bare, tokenizer("a dog", add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    assert tokenizer("the cat", "a dog").input_ids == [BOS, *prompt, eos, *response, eos]


def test_rows_start_with_one_bos_with_old_and_new_tokenizers(tmp_path):
    new = train_char_tokenizer(TEXTS)
    old = _without_post_processor(new, tmp_path)
    assert old("the cat").input_ids == new("the cat", add_special_tokens=False).input_ids  # old: no BOS
    documents = Dataset.from_dict({"text": TEXTS})
    pairs = Dataset.from_dict({"prompt": ["the cat"], "text": ["sat."]})
    for packing in ("pad", "wrap"):
        rows = [group_texts(documents, tokenizer, 16, packing)["input_ids"] for tokenizer in (old, new)]
        assert rows[0] == rows[1]
    assert all(row[0] == BOS and row[1] != BOS for row in group_texts(documents, new, 32, "pad")["input_ids"])
    sft = [prompt_response_rows(pairs, tokenizer, 32)["input_ids"] for tokenizer in (old, new)]
    assert sft[0] == sft[1] and sft[1][0] == new("the cat", "sat.").input_ids


# -- other samplers' argument names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ({"gen_length": 8}, {"max_new_tokens": 8}),
        (
            {"gen_length": 8, "block_length": 4, "steps": 4},
            {"max_new_tokens": 8, "block_length": 4, "steps": 4},
        ),
        ({"remasking": "low_confidence"}, {"order": "confidence"}),
        ({"remasking": "random"}, {"order": "learned_ranked", "order_temperature": math.inf}),
        ({"alg": "topk_margin", "alg_temp": 0.0}, {"order": "margin"}),
        ({"alg": "entropy", "alg_temp": None}, {"order": "entropy"}),
        ({"mask_id": MASK_ID, "cfg_scale": 0.0}, {}),
    ],
)
def test_other_samplers_names_give_the_same_samples(theirs, ours):
    model = tiny_model()
    prompt = torch.tensor([[2, 5, 6]])
    expected = _generate(model, prompt, **ours)
    assert torch.equal(_generate(model, prompt, **theirs), expected)
    assert torch.equal(_generate(model, prompt, method="diffusion_generate", **theirs), expected)


def test_aliases_are_stored_under_the_lomdm_names(tmp_path):
    config = LoMDMGenerationConfig(gen_length=8, remasking="random", mask_id=MASK_ID)
    assert (config.max_new_tokens, config.order, config.order_temperature) == (8, "learned_ranked", math.inf)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert not set(saved) & set(SETTING_ALIASES) and saved["max_new_tokens"] == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alg_temp": 0.5}, "alg_temp"),
        ({"cfg_scale": 1.5}, "cfg_scale"),
        ({"remasking": "bogus"}, "remasking"),
        ({"gen_length": 4, "max_new_tokens": 4}, "either `gen_length` or `max_new_tokens`"),
        ({"alg": "maskgit_plus", "order": "margin"}, "either `alg` or `order`"),
        ({"alg": "maskgit_plus", "remasking": "random"}, "either `remasking` or `alg`"),
        ({"editing_threshold": 0.5}, "editing_threshold"),
        ({"generation_tokens_hook_func": print}, "generation_tokens_hook_func"),
        ({"mask_id": 5}, "mask_token_id"),
    ],
)
def test_names_without_an_equivalent_raise_naming_them(kwargs, message):
    kwargs = {"max_new_tokens": 4, **kwargs} if "gen_length" not in kwargs else kwargs
    with pytest.raises(ValueError, match=message):
        tiny_model().generate(torch.tensor([[2, 5]]), **kwargs)


# -- LoRA ------------------------------------------------------------------------------------------------------


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_lora_with_frozen_schedulers_leaves_them_unchanged(tmp_path):
    base = tiny_model()
    schedulers = scheduler_modules(base)
    before = {name: p.clone() for name, p in base.named_parameters() if name.split(".")[0] in schedulers}
    trained = _trainable(get_peft_model(tiny_model(), lomdm_lora_config(tiny_model(), r=4)))
    model = get_peft_model(base, lomdm_lora_config(base, r=4, train_schedulers=False))
    assert type(model) is PeftModel and model.peft_config["default"].task_type is None
    assert 0 < _trainable(model) < trained
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # LoRA's B starts at zero: the second step moves A too
        optimizer.zero_grad()
        lomdm_loss(
            model, torch.randint(4, 99, (2, 10)), generator=torch.Generator().manual_seed(0)
        ).loss.backward()
        optimizer.step()
    after = dict(model.get_base_model().named_parameters())
    assert before and all(torch.equal(after[name], value) for name, value in before.items())
    assert any("lora_B" in name and p.abs().sum() > 0 for name, p in model.named_parameters())
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and all("lora_" in name and not any(s in name for s in schedulers) for name in saved)
