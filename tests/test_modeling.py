"""Model behaviour: padding invariance, input validation, save/load and trust_remote_code round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import MASK_ID, tiny_config, tiny_model
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion, LoMDMModel

SCHEDULES = ["linear", "polynomial", "per_position", "lomdm"]


def test_logits_are_subs_log_probs():
    model = tiny_model()
    z = torch.tensor([[5, MASK_ID, 7, MASK_ID]])
    log_p = model(z).logits
    assert torch.all(log_p[..., MASK_ID] == -torch.inf)  # zero-masking
    torch.testing.assert_close(log_p[0, 1].exp().sum(), torch.tensor(1.0))
    assert log_p[0, 0, 5] == 0 and log_p[0, 2, 7] == 0  # carry-over of unmasked tokens
    assert torch.isinf(log_p[0, 0]).sum() == model.config.vocab_size - 1


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_left_padding_changes_nothing_for_real_tokens(schedule):
    model = tiny_model(schedule=schedule)
    row = torch.tensor([[5, 9, MASK_ID, 22, MASK_ID, 40]])
    padded = torch.cat([torch.full((1, 3), 1), row], dim=1)
    batch = torch.cat([padded, torch.tensor([[7, 8, 9, 10, 11, MASK_ID, 13, 14, 15]])])
    attention_mask = torch.ones_like(batch)
    attention_mask[0, :3] = 0
    alone = model(row)
    together = model(batch, attention_mask=attention_mask)
    torch.testing.assert_close(together.logits[0, 3:], alone.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        together.reverse_exponents[0, 3:], alone.reverse_exponents[0], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        model.forward_exponents(batch, attention_mask)[0, 3:],
        model.forward_exponents(row)[0],
        atol=1e-5,
        rtol=1e-5,
    )


def test_fully_padded_row_gives_finite_outputs():
    model = tiny_model()
    batch = torch.tensor([[1, 1, 1, 1], [5, MASK_ID, 7, 8]])
    attention_mask = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    out = model(batch, attention_mask=attention_mask)
    assert torch.isfinite(out.reverse_exponents).all() and torch.isfinite(out.last_hidden_state).all()


def test_forward_exponents_zero_normsig_mean_over_noise_mask():
    model = tiny_model(schedule="lomdm")
    x = torch.randint(4, 99, (2, 10))
    noise_mask = torch.zeros_like(x, dtype=torch.bool)
    noise_mask[:, 4:] = True
    e = model.forward_exponents(x, noise_mask=noise_mask)
    torch.testing.assert_close(e[noise_mask].view(2, 6).mean(-1), torch.full((2,), 0.7))
    assert e.std() > 0.01  # the randomised scheduler really varies


def test_scheduler_starts_at_polynomial_schedule():
    model = LoMDMForMaskedDiffusion(tiny_config(schedule="lomdm"))
    e = model.forward_exponents(torch.randint(4, 99, (2, 10)))
    torch.testing.assert_close(e, torch.full_like(e, 0.7))


def test_scheduler_gradient_never_reaches_backbone():
    model = tiny_model(schedule="lomdm")
    model.forward_exponents(torch.randint(4, 99, (2, 10))).sum().backward()
    assert all(p.grad is None for p in model.model.parameters())
    assert model.forward_scheduler.score_proj.weight.grad is not None


def test_sdpa_and_eager_attention_agree():
    model = tiny_model()
    batch = torch.randint(4, 99, (2, 9))
    attention_mask = torch.ones_like(batch)
    attention_mask[0, :2] = 0
    model.config._attn_implementation = "sdpa"
    sdpa = model(batch, attention_mask=attention_mask).logits
    model.config._attn_implementation = "eager"
    eager = model(batch, attention_mask=attention_mask).logits
    finite = torch.isfinite(eager)
    torch.testing.assert_close(sdpa[finite], eager[finite], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    from hf_lomdm.objective import lomdm_loss

    model = tiny_model().train()
    input_ids = torch.randint(4, 99, (2, 12))
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        lomdm_loss(model, input_ids, generator=torch.Generator().manual_seed(0)).loss.backward()
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad.clone())
    assert model.model.layers[0].gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


def test_time_conditioning_requires_timesteps():
    model = tiny_model(time_conditioning=True)
    x = torch.tensor([[5, MASK_ID, 7, MASK_ID], [MASK_ID, 9, 10, 11]])
    with pytest.raises(ValueError, match="timesteps"):
        model(x)
    a = model(x, timesteps=torch.tensor([0.1, 0.1])).logits
    b = model(x, timesteps=torch.tensor([0.9, 0.9])).logits
    masked = x == MASK_ID
    assert not torch.allclose(a[masked], b[masked])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(c1=0.6, c2=0.65), "`c1` must be > `c2`"),
        (dict(c1=0.5, c2=0.5), "`c1` must be > `c2`"),
        (dict(c2=-0.1), "`c2` >= 0"),
        (dict(c1=-1.0, c2=0.0), "`c1` must be > 0"),
        (dict(mask_token_id=99), "mask_token_id"),
        (dict(mask_token_id=-1), "mask_token_id"),
        (dict(schedule="cosine"), "schedule"),
        (dict(num_attention_heads=5), "multiple of `num_attention_heads`"),
        (dict(hidden_size=-32), "hidden_size"),
        (dict(dropout=1.5), "dropout"),
        (dict(pad_token_id=MASK_ID), "equals `mask_token_id`"),
        (dict(eos_token_id=500), "outside"),
    ],
)
def test_bad_config_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


@pytest.mark.parametrize(
    ("input_ids", "extra", "message"),
    [
        (torch.tensor([[5, 99]]), {}, "token ids must be in"),
        (torch.tensor([[5, -1]]), {}, "token ids must be in"),
        (torch.tensor([[5.0, 6.0]]), {}, "integer token ids"),
        (torch.tensor([5, 6]), {}, "\\(batch, length\\)"),
        (torch.randint(4, 99, (1, 65)), {}, "exceeds max_position_embeddings=64"),
        (
            torch.tensor([[5, 6]]),
            {"attention_mask": torch.ones(1, 3)},
            "`attention_mask` must have the shape",
        ),
    ],
)
def test_bad_input_raises_value_error(input_ids, extra, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(input_ids, **extra)


def test_auto_classes_resolve_to_lomdm():
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("lomdm", vocab_size=99, mask_token_id=MASK_ID), LoMDMConfig)
    assert isinstance(AutoModel.from_config(config), LoMDMModel)
    assert isinstance(AutoModelForMaskedLM.from_config(config), LoMDMForMaskedDiffusion)


def test_package_exports_resolve_and_training_loads_on_first_use():
    script = textwrap.dedent(
        """
        import sys
        import hf_lomdm
        heavy = ("peft", "datasets", "hf_lomdm.trainer", "hf_lomdm.evaluation", "hf_lomdm.lora")
        assert not [name for name in heavy if name in sys.modules], [n for n in heavy if n in sys.modules]
        assert set(hf_lomdm.__all__) <= set(dir(hf_lomdm)), set(hf_lomdm.__all__) - set(dir(hf_lomdm))
        from hf_lomdm.evaluation import nelbo_perplexity
        from hf_lomdm.lora import lomdm_lora_config
        assert hf_lomdm.nelbo_perplexity is nelbo_perplexity and hf_lomdm.lomdm_lora_config is lomdm_lora_config
        assert all(getattr(hf_lomdm, name) is not None for name in hf_lomdm.__all__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_save_load_round_trip_logits_equal(tmp_path, schedule):
    model = tiny_model(schedule=schedule)
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    for name in ("configuration_lomdm.py", "modeling_lomdm.py", "schedule_lomdm.py"):
        assert name in files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_lomdm.LoMDMForMaskedDiffusion"
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is LoMDMForMaskedDiffusion
    x = torch.tensor([[5, MASK_ID, 7, MASK_ID, 9]])
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    torch.testing.assert_close(loaded(x).reverse_exponents, model(x).reverse_exponents)
    torch.testing.assert_close(loaded.forward_exponents(x), model.forward_exponents(x))


def test_remote_code_load_without_package(tmp_path):
    """The saved folder loads with trust_remote_code=True in a process where `import hf_lomdm` fails."""
    model = tiny_model(schedule="lomdm")
    model.save_pretrained(tmp_path / "ckpt")
    x = torch.tensor([[5, MASK_ID, 7, MASK_ID, 9]])
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_lomdm"] = None  # any import of the package now raises ImportError
        import torch
        from transformers import AutoModelForMaskedLM
        model = AutoModelForMaskedLM.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        out = model(torch.load({str(tmp_path / "x.pt")!r}))
        torch.save((out.logits, out.reverse_exponents), {str(tmp_path / "out.pt")!r})
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logits, exponents = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(logits, model(x).logits)
    torch.testing.assert_close(exponents, model(x).reverse_exponents)


def test_hub_facing_files_import_only_torch_transformers_and_siblings():
    import ast
    import pathlib

    import hf_lomdm

    root = pathlib.Path(hf_lomdm.__file__).parent
    for path in sorted(root.glob("*_lomdm.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." if node.level == 1 else (node.module or "").split(".")[0]]
                assert node.level <= 1, (
                    f"{path.name}: only single-dot sibling imports travel with checkpoints"
                )
            else:
                continue
            for name in names:
                assert name in {
                    "torch",
                    "transformers",
                    ".",
                    "__future__",
                    "math",
                    "dataclasses",
                    "typing",
                    "collections",
                    "copy",
                    "os",
                    "warnings",
                }, f"{path.name} imports {name}"


@pytest.mark.parametrize("shift", [False, True])
def test_logits_mask_computes_exactly_the_selected_rows_of_the_full_head(shift):
    model = tiny_model(shift=shift)
    x = torch.randint(4, 99, (3, 10), generator=torch.Generator().manual_seed(0))
    z = x.masked_fill(torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5, MASK_ID)
    selected = z == MASK_ID
    with torch.no_grad():
        full, packed = model(z), model(z, logits_mask=selected)
    assert packed.logits is None  # the packed rows are named for what they hold
    assert packed.packed_log_probs.shape == (int(selected.sum()), 99)
    torch.testing.assert_close(packed.packed_log_probs, full.logits[selected], rtol=0, atol=0)
    torch.testing.assert_close(packed.reverse_exponents, full.reverse_exponents, rtol=0, atol=0)
    with pytest.raises(ValueError, match="`logits_mask` must be a bool tensor"):
        model(z, logits_mask=selected.long())


def test_allowed_tokens_renormalise_the_denoiser_over_the_allowed_set():
    model = tiny_model(shift=False)
    z = torch.tensor([[5, MASK_ID, 7, MASK_ID]])
    allowed = torch.zeros(4, 99, dtype=torch.bool)
    allowed[:, 10:20] = True  # every position: tokens 10..19
    allowed[3, 40:45] = True  # the last one also 40..44
    with torch.no_grad():
        free, restricted = model(z).logits, model(z, allowed_tokens=allowed).logits
        packed = model(z, allowed_tokens=allowed[None], logits_mask=z == MASK_ID).packed_log_probs
    for position in (1, 3):
        expected = torch.log_softmax(free[0, position][allowed[position]], -1)  # SUBS, then renormalised
        torch.testing.assert_close(restricted[0, position][allowed[position]], expected)
        assert torch.isneginf(restricted[0, position][~allowed[position]]).all()
    torch.testing.assert_close(packed, restricted[z == MASK_ID])
    assert restricted[0, 0, 5] == 0 and restricted[0, 2, 7] == 0  # carry-over is unchanged


def test_bad_allowed_tokens_raise_value_error():
    model = tiny_model()
    z = torch.tensor([[5, MASK_ID, 7]])
    with pytest.raises(ValueError, match="`allowed_tokens` must be a bool tensor of shape"):
        model(z, allowed_tokens=torch.ones(4, 99, dtype=torch.bool))
    with pytest.raises(ValueError, match="`allowed_tokens` must be a bool tensor"):
        model(z, allowed_tokens=torch.ones(3, 99))
    only_mask = torch.zeros(3, 99, dtype=torch.bool)
    only_mask[:, MASK_ID] = True
    with pytest.raises(ValueError, match="no allowed token besides the mask token"):
        model(z, allowed_tokens=only_mask)
