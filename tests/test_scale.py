"""Scaling features: gradient checkpointing, `torch_compile` through the Trainer, streamed long-context data, FSDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from helpers import tiny_model

from hf_lomdm.data import DataCollatorForMaskedDiffusion
from hf_lomdm.objective import lomdm_loss
from hf_lomdm.train import parse_args
from hf_lomdm.trainer import LoMDMTrainer, LoMDMTrainingArguments

PAD_ID = 1
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


def counting_rows(n: int, seed: int = 0) -> Dataset:
    """Rows of 5-16 tokens that count up by one from a random start (ids 4..19)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length, start = (
            int(torch.randint(5, 17, (1,), generator=g)),
            int(torch.randint(0, 16, (1,), generator=g)),
        )
        rows.append([4 + (start + i) % 16 for i in range(length)])
    return Dataset.from_dict({"input_ids": rows})


def training_args(tmp_path, **overrides) -> LoMDMTrainingArguments:
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": True,
        "save_strategy": "no",
        "dataloader_pin_memory": False,
        "logging_steps": 1,
        "seed": 0,
        "per_device_train_batch_size": 8,
    }
    return LoMDMTrainingArguments(**{**defaults, **overrides})


def gradients(model, input_ids) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # dropout: the recomputation must replay the same masks
    lomdm_loss(model, input_ids, generator=torch.Generator().manual_seed(0)).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# ---- gradient checkpointing ------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["lomdm", "per_position"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_keeps_every_gradient(schedule, reentrant):
    """Backbone and scheduler gradients with checkpointing equal those without, for both checkpoint kinds.

    Reentrant checkpointing returns no gradient to a block whose inputs need none: the schedulers read
    stop-gradient features, so their blocks must stay outside it (else their gradient is silently lost).
    """
    model = tiny_model(schedule=schedule, dropout=0.1).train()
    input_ids = torch.randint(4, 99, (3, 12), generator=torch.Generator().manual_seed(2))
    reference = gradients(model, input_ids)
    model.gradient_checkpointing_enable({"use_reentrant": reentrant})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    checkpointed = gradients(model, input_ids)
    scheduler_names = [n for n in reference if "scheduler" in n or "position_scores" in n]
    assert scheduler_names and all(reference[n].abs().sum() > 0 for n in scheduler_names)
    assert checkpointed.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def _sgd_step_deltas(tmp_path, schedule: str, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Weight change of one SGD step at learning rate 1 (= minus the gradient) through `LoMDMTrainer`."""
    model = tiny_model(schedule=schedule).train()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = training_args(
        tmp_path / str(checkpointing),
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        scheduler_learning_rate=1.0,
        max_grad_norm=0.0,
        gradient_checkpointing=checkpointing,
    )
    trainer = LoMDMTrainer(
        model=model,
        args=args,
        train_dataset=counting_rows(8),
        data_collator=DataCollatorForMaskedDiffusion(pad_token_id=PAD_ID),
    )
    trainer.train()
    assert model.model.layers[0].gradient_checkpointing is checkpointing
    return {n: p.detach() - initial[n] for n, p in model.named_parameters()}


@pytest.mark.parametrize("schedule", ["lomdm", "per_position"])
def test_trainer_gradient_checkpointing_takes_the_same_step(tmp_path, schedule):
    plain = _sgd_step_deltas(tmp_path, schedule, checkpointing=False)
    checkpointed = _sgd_step_deltas(tmp_path, schedule, checkpointing=True)
    assert any(
        delta.abs().sum() > 0 for name, delta in plain.items() if "scheduler" in name or "position" in name
    )
    for name, delta in plain.items():
        torch.testing.assert_close(checkpointed[name], delta, rtol=1e-5, atol=1e-7, msg=name)


def test_cli_flag_turns_on_gradient_checkpointing(tmp_path):
    recipe = os.path.join(REPO, "training", "configs", "shakespeare-char.yaml")
    args = parse_args([recipe, "--output_dir", str(tmp_path), "--gradient_checkpointing", "true"])[2]
    assert args.activation_checkpointing is True  # Trainer enables it on the model (tested above)
    assert parse_args([recipe, "--output_dir", str(tmp_path)])[2].activation_checkpointing is False


def test_memory_benchmark_measures_less_activation_memory_with_checkpointing(tmp_path):
    output = tmp_path / "memory.json"
    command = [
        sys.executable,
        os.path.join(REPO, "benchmarks", "memory.py"),
        "--sizes",
        "main",
        "--kinds",
        "lomdm",
    ]
    command += ["--batch", "2", "--length", "32", "--rounds", "1", "--output", str(output)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["gradient_checkpointing"]: row for row in json.loads(output.read_text())["rows"]}
    assert rows[False]["activation_mib"] > 0 and rows[False]["peak_mib"] >= rows[False]["activation_mib"]
    # 4 layers checkpointed: each keeps only its input, not its attention / MLP intermediates.
    assert rows[True]["activation_mib"] < 0.5 * rows[False]["activation_mib"]
    assert rows[True]["peak_mib"] < rows[False]["peak_mib"]
