"""LoMDMTrainer: loss scaling under gradient accumulation, evaluation, LR groups, EMA, resuming, DDP, CLI."""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from datasets import Dataset
from helpers import CLI_RECIPE, tiny_model, training_arguments
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, TrainerCallback

import hf_lomdm.objective as objective_module
import hf_lomdm.trainer as trainer_module
from hf_lomdm import LoMDMForMaskedDiffusion
from hf_lomdm.cli.train import parse_args, train
from hf_lomdm.data import DataCollatorForMaskedDiffusion
from hf_lomdm.ema import EMA_WEIGHTS_NAME
from hf_lomdm.objective import LoMDMLossOutput, lomdm_loss
from hf_lomdm.parameter_groups import is_scheduler_parameter
from hf_lomdm.trainer import LoMDMTrainer, LoMDMTrainingArguments

PAD_ID = 1
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


def ragged_rows(n: int, seed: int = 0, min_len: int = 3, max_len: int = 16) -> Dataset:
    """Rows of very different lengths (so micro-batches hold different token counts); a learnable pattern:
    each row counts up by one from a random start, within ids 4..19."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        start = int(torch.randint(0, 16, (1,), generator=g))
        rows.append([4 + (start + i) % 16 for i in range(length)])
    return Dataset.from_dict({"input_ids": rows})


def make_args(tmp_path, **overrides) -> LoMDMTrainingArguments:
    """`helpers.training_arguments` with this module's learning rate and evaluation batch."""
    return training_arguments(
        tmp_path, **{"learning_rate": 3e-3, "per_device_eval_batch_size": 8, **overrides}
    )


def make_trainer(
    tmp_path, model=None, train_rows=None, eval_rows=None, trainer_cls=LoMDMTrainer, **overrides
):
    return trainer_cls(
        model=model if model is not None else tiny_model(randomize_schedule=False).train(),
        args=make_args(tmp_path, **overrides),
        train_dataset=train_rows if train_rows is not None else ragged_rows(32),
        eval_dataset=eval_rows if eval_rows is not None else ragged_rows(12, seed=1),
        data_collator=DataCollatorForMaskedDiffusion(pad_token_id=PAD_ID),
    )


def rowwise_loss(model, input_ids, attention_mask=None, labels=None, **_):
    """`lomdm_loss` row by row, with t and masks drawn from a generator seeded by the row's tokens only.

    The noise then does not depend on how rows are grouped into (micro-)batches or padded, which isolates the
    Trainer's normalisation: gradient accumulation must give exactly the full-batch per-token gradient.
    """
    outs, length = [], input_ids.shape[1]
    for b in range(input_ids.shape[0]):
        n = int(attention_mask[b].sum())
        ids = input_ids[b : b + 1, :n]
        generator = torch.Generator().manual_seed(int((ids[0] * torch.arange(1, n + 1)).sum()))
        t = 0.05 + 0.95 * torch.rand(1, generator=generator)
        outs.append(
            lomdm_loss(
                model,
                ids,
                attention_mask[b : b + 1, :n],
                labels[b : b + 1, :n],
                t=t,
                num_samples=2,
                estimator="rloo",
                generator=generator,
            )
        )
    tokens = torch.stack([o.num_tokens.sum() for o in outs])
    pad = lambda name, value: torch.cat(
        [F.pad(getattr(o, name), (0, length - o.noise_mask.shape[1]), value=value) for o in outs]
    )
    cat = lambda name: torch.cat([getattr(o, name) for o in outs])
    return LoMDMLossOutput(
        loss=sum(o.loss * n for o, n in zip(outs, tokens)) / tokens.sum(),
        nelbo=cat("nelbo"),
        loss_main=cat("loss_main"),
        loss_velocity=cat("loss_velocity"),
        num_tokens=cat("num_tokens"),
        t=cat("t"),
        log_t=cat("log_t"),
        forward_exponents=pad("forward_exponents", 1.0),
        noise_mask=pad("noise_mask", False),
        confidence=pad("confidence", math.nan),
    )


def test_gradient_accumulation_matches_full_batch(tmp_path, monkeypatch):
    """One SGD step (lr 1, no clipping): weight change = -gradient. GA = 4 x B/4 must equal GA = 1 x B."""
    monkeypatch.setattr(trainer_module, "lomdm_loss", rowwise_loss)
    rows = ragged_rows(8, seed=3, min_len=2, max_len=16)
    deltas, losses = [], []
    for batch_size, accumulation in ((8, 1), (2, 4)):
        model = tiny_model(randomize_schedule=True).train()
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        trainer = make_trainer(
            tmp_path,
            model=model,
            train_rows=rows,
            max_steps=1,
            estimator="rloo",  # what `rowwise_loss` computes (no token table to update between micro-batches)
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=0.0,
            weight_decay=0.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
        )
        trainer.train()
        deltas.append({name: (p.detach() - before[name]) for name, p in model.named_parameters()})
        losses.append(trainer.state.log_history[0]["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for name, delta in deltas[0].items():
        torch.testing.assert_close(deltas[1][name], delta, rtol=1e-4, atol=1e-6, msg=name)
    assert any(float(d.abs().max()) > 0 for n, d in deltas[0].items() if is_scheduler_parameter(n))


def test_training_lowers_validation_nelbo(tmp_path):
    rows = ragged_rows(64, seed=5, min_len=8)
    trainer = make_trainer(tmp_path, train_rows=rows, eval_rows=rows, max_steps=40, eval_time_samples=4)
    before = trainer.evaluate()["eval_nelbo"]
    trainer.train()
    after = trainer.evaluate()["eval_nelbo"]
    # Same evaluation noise both times (common random numbers), so the drop is the model's.
    assert after < before - 0.5, (before, after)
    logged = [entry for entry in trainer.state.log_history if "nelbo" in entry]
    assert logged[-1]["nelbo"] < logged[0]["nelbo"]


def test_eval_reports_ppl_bound_equal_to_exp_of_per_token_nelbo(tmp_path):
    rows = ragged_rows(11, seed=2)
    trainer = make_trainer(
        tmp_path,
        model=tiny_model(randomize_schedule=True),
        eval_rows=rows,
        per_device_eval_batch_size=4,
        eval_time_samples=3,
    )
    metrics = trainer.evaluate()
    assert all(math.isfinite(metrics[k]) for k in ("eval_nelbo", "eval_velocity", "eval_ppl_bound"))
    assert metrics["eval_ppl_bound"] == pytest.approx(math.exp(metrics["eval_nelbo"]), rel=1e-12)
    assert "eval_main" not in metrics  # each quantity once: L_main = nelbo - velocity
    assert metrics["eval_nelbo"] > metrics["eval_velocity"] > 0  # randomized schedulers: e != ê
    assert metrics["eval_loss"] == metrics["eval_nelbo"]
    assert metrics["eval_tokens"] == sum(len(r) for r in rows["input_ids"])  # every token once, no padding
    assert trainer.evaluate()["eval_nelbo"] == metrics["eval_nelbo"]  # same noise at every evaluation


def test_end_of_run_metrics_block_states_each_metric_once(tmp_path, capsys):
    trainer = make_trainer(tmp_path, eval_rows=ragged_rows(5, seed=3), per_device_eval_batch_size=4)
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == metrics["eval_nelbo"]  # kept for metric_for_best_model
    capsys.readouterr()
    trainer.log_metrics("eval", metrics)
    printed = capsys.readouterr().out
    assert printed.count("eval_nelbo ") == 1 and "eval_loss" not in printed
    trainer.save_metrics("eval", metrics)
    saved = json.loads((Path(trainer.args.output_dir) / "eval_results.json").read_text())
    assert saved["eval_nelbo"] == metrics["eval_nelbo"] and "eval_loss" not in saved
    assert "eval_loss" in metrics  # the caller's dict is left as it is


def test_eval_nelbo_weights_tokens_not_sequences(tmp_path, monkeypatch):
    """With a fake objective whose per-sequence NELBO is |M| * c (c = the row's first token), the per-token
    NELBO must be sum(|M| c) / sum(|M|) over the set, across uneven batches and time samples."""

    def fake_loss(model, input_ids, attention_mask=None, labels=None, **_):
        tokens = attention_mask.sum(1)
        nelbo = tokens * input_ids[:, 0].float()
        zeros = torch.zeros_like(input_ids, dtype=torch.float)
        return LoMDMLossOutput(
            loss=nelbo.sum(),
            nelbo=nelbo,
            loss_main=nelbo,
            loss_velocity=0 * nelbo,
            num_tokens=tokens,
            t=0 * nelbo,
            log_t=0 * nelbo,
            forward_exponents=zeros,
            noise_mask=attention_mask.bool(),
            confidence=zeros,
        )

    monkeypatch.setattr(objective_module, "lomdm_loss", fake_loss)  # what `stratified_nelbo` calls
    rows = ragged_rows(7, seed=4)
    metrics = make_trainer(
        tmp_path, eval_rows=rows, per_device_eval_batch_size=3, eval_time_samples=2
    ).evaluate()
    lengths = [len(r) for r in rows["input_ids"]]
    expected = sum(n * r[0] for n, r in zip(lengths, rows["input_ids"])) / sum(lengths)
    assert metrics["eval_nelbo"] == pytest.approx(expected, rel=1e-12)


def test_scheduler_parameters_get_their_own_learning_rate(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=3,
        learning_rate=1e-3,
        scheduler_learning_rate=4e-2,
        lr_scheduler_type="linear",
        weight_decay=0.1,
    )
    trainer.train()
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    groups = trainer.optimizer.param_groups
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())  # every parameter exactly once
    ratios = set()
    for group in groups:
        kinds = {is_scheduler_parameter(names[id(p)]) for p in group["params"]}
        assert len(kinds) == 1
        ratios.add((kinds.pop(), group["initial_lr"]))
    assert ratios == {(False, 1e-3), (True, 4e-2)}
    # The linear decay scales both groups alike (step 2 of 3 runs at 2/3 of the initial rates).
    assert trainer.lr_scheduler.get_last_lr()[-1] == 0.0
    second = trainer.state.log_history[1]
    assert second["learning_rate"] == pytest.approx(1e-3 * 2 / 3)
    assert second["scheduler_learning_rate"] == pytest.approx(4e-2 * 2 / 3)


@pytest.mark.parametrize(
    ("schedule", "multiplier"), [("per_position", 25.0), ("lomdm", 1.0), ("linear", 1.0)]
)
def test_default_scheduler_learning_rate_depends_on_the_schedule(tmp_path, schedule, multiplier):
    trainer = make_trainer(
        tmp_path, model=tiny_model(schedule=schedule).train(), max_steps=1, learning_rate=2e-3
    )
    trainer.create_optimizer()
    rates = {group["lr"] for group in trainer.optimizer.param_groups}
    assert rates == ({2e-3, 2e-3 * multiplier} if multiplier != 1.0 else {2e-3})


def test_training_logs_objective_statistics(tmp_path):
    trainer = make_trainer(tmp_path, model=tiny_model(randomize_schedule=True).train(), max_steps=2)
    trainer.train()
    entry = trainer.state.log_history[0]
    for key in ("nelbo", "velocity", "exponent_mean", "exponent_std", "exponent_confidence_corr"):
        assert math.isfinite(entry[key]), key
    assert "main" not in entry and entry["nelbo"] > entry["velocity"] > 0  # L_main = nelbo - velocity
    assert entry["exponent_std"] > 0 and -1 <= entry["exponent_confidence_corr"] <= 1


def test_ema_weights_are_evaluated_and_saved(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=5, ema_decay=0.5, learning_rate=1e-2)
    trainer.train()
    ema_metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "saved"))
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    raw = dict(trainer.model.named_parameters())
    for name, shadow in trainer._ema.shadow.items():
        torch.testing.assert_close(saved[name], shadow)
    assert any(not torch.equal(saved[name], raw[name].detach()) for name in trainer._ema.shadow)
    # Evaluating the saved (EMA) weights without EMA reproduces the EMA evaluation (same evaluation noise).
    reloaded = LoMDMForMaskedDiffusion.from_pretrained(tmp_path / "saved")
    plain = make_trainer(tmp_path, model=reloaded).evaluate()
    assert plain["eval_nelbo"] == pytest.approx(ema_metrics["eval_nelbo"], rel=1e-6)


class _RecordingTrainer(LoMDMTrainer):
    """Records (global step, batch fingerprint) for every micro-batch."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.batches.append((self.state.global_step, inputs["input_ids"].tolist()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class _Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt("simulated kill after checkpoint-3")


def _run(tmp_path, name, resume=None, crash=False):
    trainer = make_trainer(
        tmp_path / name,
        trainer_cls=_RecordingTrainer,
        train_rows=ragged_rows(16, seed=6),
        model=tiny_model(seed=7, randomize_schedule=False).train(),
        max_steps=6,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=3,
        ema_decay=0.9,
    )
    trainer.batches = []
    if crash:
        trainer.add_callback(_Crash())
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
    else:
        trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resumed_run_continues_at_same_step_with_same_data_and_weights(tmp_path):
    """16 rows, batch 4: 4 steps per epoch, so the resumed part also crosses an epoch boundary."""
    full = _run(tmp_path, "full")
    crashed = _run(tmp_path, "crashed", crash=True)
    checkpoint = str(tmp_path / "crashed" / "out" / "checkpoint-3")
    assert os.path.isfile(os.path.join(checkpoint, EMA_WEIGHTS_NAME))
    resumed = _run(tmp_path, "resumed", resume=checkpoint)
    assert crashed.batches == full.batches[:4]
    assert resumed.batches[0][0] == 3 and resumed.state.global_step == 6
    assert resumed.batches == full.batches[3:]
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    for name, shadow in full._ema.shadow.items():
        torch.testing.assert_close(resumed._ema.shadow[name], shadow, rtol=1e-5, atol=1e-6, msg=name)


def test_invalid_training_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="num_noise_samples"):
        make_args(tmp_path, estimator="rloo", num_noise_samples=1)
    for bad in (0.0, -1e-3, math.inf, math.nan):
        with pytest.raises(ValueError, match="scheduler_learning_rate"):
            make_args(tmp_path, scheduler_learning_rate=bad)
    with pytest.raises(ValueError, match="0.0"):
        make_args(tmp_path, ema_decay=0.0)


def test_recipes_parse_and_document_their_launch(tmp_path):
    recipes = sorted(glob.glob(os.path.join(REPO, "training", "configs", "*.yaml")))
    assert {os.path.basename(r) for r in recipes} >= {
        "shakespeare-tiny.yaml",
        "shakespeare-small.yaml",
        "owt-small.yaml",
        "lm1b-small.yaml",
    }
    for recipe in recipes:
        with open(recipe, encoding="utf-8") as f:
            header = f.read().split("\n\n")[0]
        assert "Launch:" in header and "Hardware:" in header and "Expected:" in header, recipe
        assert f"training/configs/{os.path.basename(recipe)}" in header, recipe
        # use_cpu: the GPU recipes ask for bf16, which TrainingArguments only accepts here on the CPU.
        argv = [recipe, "--output_dir", str(tmp_path), "--use_cpu", "true"]
        with open(recipe, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        for name in (
            "train_files",
            "validation_files",
        ):  # placeholders for the user's data: checked at parse time
            if config.get(name) and not os.path.isfile(config[name][0]):
                with pytest.raises(ValueError, match=f"`{name}` '{config[name][0]}': no such file"):
                    parse_args(argv)
                (tmp_path / "rows.jsonl").write_text('{"text": "a b c"}\n')
                argv += [f"--{name}", str(tmp_path / "rows.jsonl")]
        base = config.get("model_name_or_path")
        if (
            base is not None
        ):  # a converted checkpoint (lomdm-convert): checked at parse time, so it must exist
            with pytest.raises(ValueError, match=f"`model_name_or_path` '{base}': no such folder"):
                parse_args(argv)
            tiny_model().save_pretrained(tmp_path / "base")
            argv += ["--model_name_or_path", str(tmp_path / "base")]
        training_args = parse_args(argv)[2]
        assert training_args.output_dir == str(tmp_path)  # the command line overrides the file


def test_cli_refuses_non_positive_max_steps_and_abbreviations(tmp_path):
    recipe = os.path.join(REPO, "training", "configs", "shakespeare-char.yaml")
    for steps in ("0", "-1"):
        with pytest.raises(ValueError, match="max_steps"):
            parse_args([recipe, "--output_dir", str(tmp_path), "--max_steps", steps])
    # Training by epochs stays possible when asked for explicitly.
    args = parse_args(
        [recipe, "--output_dir", str(tmp_path), "--max_steps", "-1", "--num_train_epochs", "1"]
    )[2]
    assert args.max_steps == -1 and args.num_train_epochs == 1
    with pytest.raises(ValueError, match="--max_step'"):  # prefix matching would read it as --max_steps
        parse_args([recipe, "--output_dir", str(tmp_path), "--max_step", "5"])


def test_one_thread_by_default_on_small_machines(monkeypatch):
    from hf_lomdm import runtime

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert runtime.default_num_threads() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert runtime.default_num_threads() is None  # PyTorch's default on larger machines
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runtime.default_num_threads() is None  # the user's choice wins


def test_cli_trains_saves_a_loadable_checkpoint_and_generates(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"Line {i}: to be, or not to be, that is the question {i % 7}." for i in range(80))
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(CLI_RECIPE.format(corpus=corpus))
    out = tmp_path / "run"
    report = train([str(recipe), "--output_dir", str(out), "--max_steps", "3"])
    assert report["steps"] == 3  # the flag overrides the file
    assert math.isfinite(report["eval_nelbo"]) and report["eval_ppl_bound"] == pytest.approx(
        math.exp(report["eval_nelbo"])
    )
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "training_args.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # a folder for the Hub holds no pickle
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 32
    assert "held-out rows" in (out / "README.md").read_text()  # the card's exponent spread: validation rows
    assert "eval_loss" not in json.loads((out / "eval_results.json").read_text())  # eval_nelbo, once
    model = AutoModelForMaskedLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (
        isinstance(model, LoMDMForMaskedDiffusion) and model.config.mask_token_id == tokenizer.mask_token_id
    )
    prompt = torch.tensor([[tokenizer.bos_token_id]])
    sequences = model.generate(prompt, steps=4, generator=torch.Generator().manual_seed(0))
    assert sequences.shape == (1, 32) and tokenizer.mask_token_id not in sequences.tolist()[0]


DDP_SCRIPT = """\
import sys, torch
from datasets import Dataset
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from helpers import tiny_model
from hf_lomdm.data import DataCollatorForMaskedDiffusion
from hf_lomdm.trainer import LoMDMTrainer, LoMDMTrainingArguments
torch.set_num_threads(1)
rows = [[4 + (s + i) % 16 for i in range(4 + s % 12)] for s in range(32)]
args = LoMDMTrainingArguments(output_dir={out!r}, use_cpu=True, report_to=[], disable_tqdm=True, max_steps=3,
                              per_device_train_batch_size=4, learning_rate=1e-2, save_strategy="no",
                              scheduler_learning_rate=5e-2, logging_steps=1, seed=0)
model = tiny_model(randomize_schedule=False).train()
trainer = LoMDMTrainer(model=model, args=args, train_dataset=Dataset.from_dict({{"input_ids": rows}}),
                       data_collator=DataCollatorForMaskedDiffusion(pad_token_id=1))
trainer.train()
rank = trainer.args.process_index
assert trainer.args.world_size == 2, trainer.args.world_size
save_file({{n: p.detach().contiguous() for n, p in model.named_parameters()}}, {out!r} +
f"/rank{{rank}}.safetensors")
"""


@pytest.mark.slow
@pytest.mark.ci
def test_two_cpu_processes_keep_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(tests=os.path.join(REPO, "tests"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            os.path.join(REPO, "training", "accelerate", "cpu.yaml"),
            "--num_processes",
            "2",
            str(script),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    initial = dict(tiny_model(randomize_schedule=False).named_parameters())
    for name, weight in rank0.items():
        torch.testing.assert_close(rank1[name], weight, rtol=0, atol=0, msg=name)
    assert all(
        not torch.equal(rank0[n], initial[n].detach()) for n in rank0 if "score_proj" in n
    )  # schedulers trained


def test_high_scheduler_learning_rate_does_not_saturate_the_lomdm_scheduler(tmp_path):
    # The collapse setting: the schedulers at 50x the backbone's learning rate on a tiny task. With NormSig of raw
    # scores, nothing held their common mode: within 20-60 steps every sigmoid saturated (fraction 1.0) and the
    # exponents froze (std 0.0). Centred scores keep the sigmoids in their steep range and the spread alive.
    from benchmarks.order_zoo.synthetic import order_task

    task = order_task("max", size=4, symbols=4)
    torch.manual_seed(0)
    model = LoMDMForMaskedDiffusion(
        tiny_model(
            vocab_size=task.vocab_size, max_position_embeddings=task.length + 1, num_hidden_layers=1
        ).config
    )
    args = make_args(
        tmp_path,
        max_steps=60,
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        scheduler_learning_rate=0.1,
        logging_steps=10,
        estimator="rloo",  # the estimator the collapse was seen with (its noisy steps drove the scores apart)
    )
    data = Dataset.from_dict(task.training_rows(32 * 60, torch.Generator().manual_seed(1)))
    trainer = LoMDMTrainer(
        model=model, args=args, train_dataset=data, data_collator=DataCollatorForMaskedDiffusion(1)
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "scheduler_saturated_fraction" in log]
    assert len(logs) == 6
    assert max(log["scheduler_saturated_fraction"] for log in logs) < 0.5
    assert min(log["exponent_std"] for log in logs[1:]) > 0.01


# --- The scheduler's gradient: its own clip, a delayed start, the per-token control variate ----------------


def test_scheduler_gradient_is_clipped_apart_from_the_backbone(tmp_path):
    """The failure: one joint clip of norm 1 let a noisy scheduler gradient of norm ~50 shrink every backbone
    update ~50x. Clipped apart, the backbone's gradient is left as it is."""
    trainer = make_trainer(tmp_path, model=tiny_model(schedule="lomdm").train(), max_grad_norm=1.0)
    backbone, schedulers = [], []
    for name, p in trainer.model.named_parameters():
        (schedulers if is_scheduler_parameter(name) else backbone).append(p)
    g = torch.Generator().manual_seed(0)
    for p in backbone + schedulers:
        p.grad = torch.randn(p.shape, generator=g)
    for params, norm in ((backbone, 0.5), (schedulers, 50.0)):
        current = torch.cat([p.grad.flatten() for p in params]).norm()
        for p in params:
            p.grad.mul_(norm / current)
    before = [p.grad.clone() for p in backbone]
    returned = trainer._clip_grad_norm(trainer.model)
    assert float(returned) == pytest.approx(0.5, rel=1e-5)  # the logged grad_norm is the backbone's
    for p, g0 in zip(backbone, before):
        torch.testing.assert_close(p.grad, g0)
    assert float(torch.cat([p.grad.flatten() for p in schedulers]).norm()) == pytest.approx(1.0, rel=1e-4)
    assert trainer._scheduler_grad_norm == [pytest.approx(50.0, rel=1e-4)]


def test_scheduler_start_step_keeps_the_schedule_fixed_then_lets_it_learn(tmp_path):
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots.append(
                torch.cat(
                    [
                        p.detach().flatten().clone()
                        for n, p in model.named_parameters()
                        if is_scheduler_parameter(n)
                    ]
                )
            )

    trainer = make_trainer(
        tmp_path,
        model=tiny_model(schedule="lomdm", randomize_schedule=False).train(),
        max_steps=4,
        estimator="tcv",
        num_noise_samples=1,
        scheduler_start_step=2,
        scheduler_warmup_steps=2,
        lr_scheduler_type="constant",
    )
    trainer.add_callback(Snapshot())
    initial = torch.cat(
        [
            p.detach().flatten().clone()
            for n, p in trainer.model.named_parameters()
            if is_scheduler_parameter(n)
        ]
    )
    trainer.train()
    assert torch.equal(snapshots[0], initial) and torch.equal(snapshots[1], initial)  # steps 1-2: fixed
    assert not torch.equal(snapshots[3], initial)  # learning once started
    rates = [entry["scheduler_learning_rate"] for entry in trainer.state.log_history if "loss" in entry]
    assert rates == pytest.approx([0.0, 0.0, 3e-3 / 2, 3e-3])  # 0 before the start, then the linear ramp
    assert [entry["learning_rate"] for entry in trainer.state.log_history if "loss" in entry] == [3e-3] * 4


def test_token_baseline_follows_the_losses_and_resumes_from_the_checkpoint(tmp_path):
    trainer = make_trainer(
        tmp_path,
        model=tiny_model(schedule="lomdm").train(),
        max_steps=2,
        estimator="tcv",
        num_noise_samples=1,
        save_strategy="steps",
        save_steps=2,
    )
    trainer.train()
    table = trainer._token_baseline.clone()
    assert table.shape == (99,) and bool((table != math.log(99)).any())  # moved away from log V ...
    assert torch.equal(table[20:], torch.full((79,), math.log(99)))  # ... only for ids that occur (4..19)
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-2")
    resumed = make_trainer(
        tmp_path, model=tiny_model(schedule="lomdm").train(), estimator="tcv", num_noise_samples=1
    )
    resumed._load_from_checkpoint(checkpoint)
    torch.testing.assert_close(resumed._token_baseline, table)


def test_invalid_scheduler_training_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match=r"`token_baseline_decay` must be in \[0, 1\), got 1.0"):
        make_args(tmp_path, token_baseline_decay=1.0)
    with pytest.raises(ValueError, match=r"`scheduler_max_grad_norm` must be >= 0 \(or None\), got -1.0"):
        make_args(tmp_path, scheduler_max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="`scheduler_start_step` must be >= 0, got -3"):
        make_args(tmp_path, scheduler_start_step=-3)
    with pytest.raises(ValueError, match=r"estimator.*got 'score'"):
        make_args(tmp_path, estimator="score")
