"""PEFT LoRA on LoMDM: what trains, merge equivalence, gradient checkpointing, adapter round trip."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import CLI_RECIPE, MASK_ID, tiny_model
from peft import PeftModel, get_peft_model
from transformers import AutoModelForMaskedLM

from hf_lomdm.lora import lomdm_lora_config
from hf_lomdm.objective import lomdm_loss
from hf_lomdm.parameter_groups import scheduler_modules


def _lora_model(schedule="lomdm", train_schedulers=True, seed=0):
    base = tiny_model(schedule=schedule, seed=seed)
    model = get_peft_model(
        base, lomdm_lora_config(base, r=4, lora_alpha=8, train_schedulers=train_schedulers)
    )
    with torch.no_grad():  # LoRA's B starts at zero; make the adapter do something
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return model


@pytest.mark.parametrize("schedule", ["lomdm", "per_position", "linear"])
def test_only_adapter_and_scheduler_parameters_receive_gradients(schedule):
    model = _lora_model(schedule)
    lomdm_loss(
        model, torch.randint(4, 99, (3, 12)), generator=torch.Generator().manual_seed(0)
    ).loss.backward()
    schedulers = scheduler_modules(model.get_base_model())
    for name, param in model.named_parameters():
        trainable = "lora_" in name or any(f"{s}.modules_to_save" in name for s in schedulers)
        assert param.requires_grad == trainable, name
        assert (param.grad is not None and param.grad.abs().sum() > 0) == trainable, name
    # LoRA never wraps the scheduler layers' own projections (they are trained in full instead)
    assert not any("lora_" in name and "scheduler" in name for name, _ in model.named_parameters())


def test_frozen_schedulers_get_no_lora_and_no_gradient():
    model = _lora_model("lomdm", train_schedulers=False)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in name and "scheduler" not in name for name in names)


def test_merged_outputs_equal_unmerged_outputs():
    model = _lora_model().eval()
    z = torch.tensor([[5, MASK_ID, 7, MASK_ID, 9, MASK_ID]])
    before = model(z)
    before_e = model.forward_exponents(z)
    merged = model.merge_and_unload()
    after = merged(z)
    torch.testing.assert_close(after.logits, before.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.reverse_exponents, before.reverse_exponents, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(merged.forward_exponents(z), before_e, atol=1e-6, rtol=1e-6)


def test_gradient_checkpointing_works_with_the_adapter():
    model = _lora_model().train()
    input_ids = torch.randint(4, 99, (2, 12), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.get_base_model().activation_checkpointing_enable()
        model.zero_grad()
        lomdm_loss(model, input_ids, generator=torch.Generator().manual_seed(0)).loss.backward()
        grads.append(next(p.grad.clone() for n, p in model.named_parameters() if "lora_A" in n))
    torch.testing.assert_close(grads[0], grads[1])


def test_adapter_round_trip_then_merge_gives_the_same_generation(tmp_path):
    model = _lora_model().eval()
    prompt = torch.tensor([[5, 6, 7]])
    kwargs = dict(max_new_tokens=6, steps=6, order="learned")
    expected = model.generate(prompt, generator=torch.Generator().manual_seed(0), **kwargs)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(schedule="lomdm", seed=0), tmp_path).eval()
    assert torch.equal(
        loaded.generate(prompt, generator=torch.Generator().manual_seed(0), **kwargs), expected
    )
    merged = loaded.merge_and_unload()
    assert torch.equal(
        merged.generate(prompt, generator=torch.Generator().manual_seed(0), **kwargs), expected
    )


def test_bad_lora_targets_raise():
    with pytest.raises(ValueError, match="target_modules"):
        lomdm_lora_config(tiny_model(), target_modules=["lm_head"])


def test_cli_lora_sft_trains_only_the_adapter_on_responses(tmp_path):
    import json

    from huggingface_hub import ModelCard

    from hf_lomdm.cli.train import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"Line {i}: to be, or not to be, that is the question {i % 7}." for i in range(80))
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(CLI_RECIPE.format(corpus=corpus))
    base = tmp_path / "base"
    train([str(recipe), "--output_dir", str(base), "--max_steps", "2", "--sample_count", "0"])
    assert ModelCard.load(base / "README.md").data.eval_results  # the full model got a filled card

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps({"prompt": f"Line {i}: to be,", "text": f"or not to be {i % 7}."}) for i in range(40)
        )
    )
    adapter = tmp_path / "adapter"
    report = train(
        [
            str(recipe),
            "--output_dir",
            str(adapter),
            "--model_name_or_path",
            str(base),
            "--lora_r",
            "4",
            "--train_files",
            str(pairs),
            "--prompt_column",
            "prompt",
            "--max_steps",
            "2",
            "--sample_count",
            "0",
        ]
    )
    assert report["steps"] == 2 and math.isfinite(report["eval_nelbo"])
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    loaded = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(base), adapter)
    assert any("lora_A" in name for name, _ in loaded.named_parameters())


def test_lora_without_a_base_model_is_refused(tmp_path):
    from hf_lomdm.cli.train import train

    with pytest.raises(ValueError, match="model_name_or_path"):
        train(["--output_dir", str(tmp_path), "--lora_r", "4"])
