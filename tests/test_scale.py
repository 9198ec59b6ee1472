"""Scaling features: gradient checkpointing, `torch_compile` through the Trainer, streamed long-context data, FSDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset, IterableDataset
from helpers import WORDS, tiny_causal_lm, tiny_model, training_arguments, word_tokenizer
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM
from transformers.testing_utils import require_torch_multi_accelerator

from hf_lomdm import LoMDMForMaskedDiffusion
from hf_lomdm.cli.train import parse_args
from hf_lomdm.cli.train import train as train_recipe
from hf_lomdm.data import DataArguments, DataCollatorForMaskedDiffusion, group_texts, load_text_datasets
from hf_lomdm.generation_config_lomdm import ORDERS
from hf_lomdm.objective import lomdm_loss
from hf_lomdm.trainer import LoMDMTrainer

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
    args = training_arguments(
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


# ---- torch.compile through the Trainer -------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_training_saves_and_reloads_under_the_eager_parameter_names(tmp_path):
    """`torch_compile=True`: Trainer checkpoints, `save_model` and `save_pretrained` of the compiled wrapper all
    hold the model's own parameter names (no `_orig_mod.`) and load back with `from_pretrained`, weights equal.

    The `eager` dynamo backend: the compiled wrapper is the same as inductor's, without minutes of C++ compiling.
    """
    args = training_arguments(
        tmp_path,
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        torch_compile=True,
        torch_compile_backend="eager",
    )
    model = tiny_model(randomize_schedule=False).train()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = LoMDMTrainer(
        model=model,
        args=args,
        train_dataset=counting_rows(16),
        data_collator=DataCollatorForMaskedDiffusion(pad_token_id=PAD_ID),
    )
    trainer.train()
    assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert any(
        "_orig_mod." in name for name in trainer.model_wrapped.state_dict()
    )  # what naive saving writes
    trainer.save_model(str(tmp_path / "final"))
    trainer.model_wrapped.save_pretrained(tmp_path / "wrapper")
    trained = dict(model.named_parameters())
    assert not torch.equal(
        trained["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"]
    )
    for folder in (tmp_path / "out" / "checkpoint-2", tmp_path / "final", tmp_path / "wrapper"):
        assert set(load_file(str(folder / "model.safetensors"))) <= set(model.state_dict()), folder
        loaded = dict(AutoModelForMaskedLM.from_pretrained(folder).named_parameters())
        assert loaded.keys() == trained.keys()
        for name, weight in trained.items():
            torch.testing.assert_close(loaded[name], weight.detach(), rtol=0, atol=0, msg=f"{folder}: {name}")


# ---- streamed long-context data --------------------------------------------------------------------------


def write_jsonl(path, documents: int, seed: int) -> list[str]:
    """JSON lines `{"text": ...}` of 5-60 random words each; returns the documents."""
    g = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(documents):
        length = int(torch.randint(5, 61, (1,), generator=g))
        texts.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g)))
    path.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(texts)))
    return texts


@pytest.fixture
def corpus(tmp_path):
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    return write_jsonl(train, 400, seed=0), write_jsonl(validation, 40, seed=1), str(train), str(validation)


@pytest.mark.parametrize("packing", ["wrap", "pad"])
def test_streamed_corpus_packs_1024_token_rows_like_the_loaded_corpus(corpus, packing):
    texts, _, train, validation = corpus
    tokenizer = word_tokenizer()
    streamed_args = DataArguments(
        train_files=[train], validation_files=[validation], streaming=True, block_size=1024, packing=packing
    )
    raw = load_text_datasets(streamed_args)
    assert isinstance(raw["train"], IterableDataset) and isinstance(raw["validation"], Dataset)
    assert raw["validation"].num_rows == 40
    streamed = [row["input_ids"] for row in group_texts(raw["train"], tokenizer, 1024, packing)]
    loaded_args = DataArguments(
        train_files=[train], validation_files=[validation], block_size=1024, packing=packing
    )
    loaded = group_texts(load_text_datasets(loaded_args)["train"], tokenizer, 1024, packing)["input_ids"]
    assert streamed == loaded
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    documents = [[bos, *tokenizer(text, add_special_tokens=False)["input_ids"], eos] for text in texts]
    if packing == "wrap":  # <bos> doc <eos> concatenated in file order, cut into full rows, the tail dropped
        assert len(streamed) >= 5 and all(len(row) == 1024 for row in streamed)
        flat = [token for doc in documents for token in doc]
        assert [token for row in streamed for token in row] == flat[: 1024 * len(streamed)]
    else:  # every document is its own row (all are shorter than 1024 tokens)
        assert streamed == documents


def test_streaming_arguments_name_what_is_missing(corpus):
    _, _, train, _ = corpus
    with pytest.raises(ValueError, match="max_train_samples"):
        DataArguments(train_files=[train], streaming=True, max_train_samples=8)
    with pytest.raises(ValueError, match="streaming"):
        DataArguments(streaming=True)  # the built-in corpus
    with pytest.raises(ValueError, match="validation_files"):
        load_text_datasets(DataArguments(train_files=[train], streaming=True))
    with pytest.raises(ValueError, match="'body'"):
        load_text_datasets(
            DataArguments(train_files=[train], validation_files=[train], streaming=True, text_column="body")
        )


def test_trainer_trains_on_a_streamed_corpus_for_max_steps(tmp_path, corpus):
    _, _, train, validation = corpus
    args = DataArguments(train_files=[train], validation_files=[validation], streaming=True, block_size=1024)
    rows = group_texts(load_text_datasets(args)["train"], word_tokenizer(), 1024)
    trainer = LoMDMTrainer(
        model=tiny_model(randomize_schedule=False, max_position_embeddings=1024).train(),
        args=training_arguments(tmp_path, max_steps=3, per_device_train_batch_size=2),
        train_dataset=rows,
        data_collator=DataCollatorForMaskedDiffusion(pad_token_id=PAD_ID),
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "nelbo" in log]
    assert trainer.state.global_step == 3 and len(logs) == 3
    assert all(math.isfinite(log["nelbo"]) and log["nelbo"] > 0 for log in logs)


def test_streaming_recipe_trains_through_the_cli(tmp_path, corpus):
    _, _, train, validation = corpus
    recipe = os.path.join(REPO, "training", "configs", "stream-1024.yaml")
    tiny = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2"]
    tiny += [
        "--intermediate_size",
        "64",
        "--scheduler_intermediate_size",
        "32",
        "--scheduler_head_size",
        "16",
    ]
    report = train_recipe(
        [
            recipe,
            "--train_files",
            train,
            "--validation_files",
            validation,
            "--output_dir",
            str(tmp_path / "run"),
        ]
        + tiny
        + ["--max_steps", "2", "--per_device_train_batch_size", "2", "--tokenizer_vocab_size", "300"]
        + ["--use_cpu", "true", "--save_strategy", "no", "--eval_strategy", "no", "--sample_count", "0"]
    )
    assert report["steps"] == 2 and math.isfinite(report["eval_nelbo"])
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "run")
    assert model.config.max_position_embeddings == 1024


# ---- FSDP2 ------------------------------------------------------------------------------------------------

# FSDP2 (`fully_shard`) with the shard units of training/accelerate/fsdp.yaml (every LoMDMLayer, then the root),
# on CPU processes with gloo; run without torchrun it is the single-process reference. Each step trains on 8
# rows: each of the 2 processes takes 4 (FSDP averages the gradients), the reference takes both halves as two
# micro-batches with the same noise. A sharded checkpoint (torch.distributed.checkpoint) is written at step 2,
# then a fresh sharded model resumes from it; the last one (step 4) is converted offline by the test.
FSDP_SCRIPT = """\
import json, os, sys
import torch, torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
from torch.distributed.checkpoint.state_dict import set_state_dict
from torch.distributed.fsdp import fully_shard
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from helpers import tiny_model
from hf_lomdm.layers_lomdm import LoMDMLayer
from hf_lomdm.generation_config_lomdm import ORDERS
from hf_lomdm.objective import lomdm_loss

torch.set_num_threads(1)
out, sharded = {out!r}, "WORLD_SIZE" in os.environ
if sharded:
    dist.init_process_group("gloo")
rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
halves = torch.randint(4, 99, (8, 16), generator=torch.Generator().manual_seed(0)).chunk(2)


def build():
    model = tiny_model(randomize_schedule=False).train()
    if sharded:
        for module in model.modules():
            if isinstance(module, LoMDMLayer):
                fully_shard(module)
        fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model, optimizer, step):
    sums = torch.zeros(2, dtype=torch.float64)  # NELBO, tokens
    for part in [rank] if sharded else [0, 1]:
        res = lomdm_loss(model, halves[part], generator=torch.Generator().manual_seed(1000 * step + part))
        (res.loss if sharded else res.loss / 2).backward()
        sums += torch.stack([res.nelbo.sum().detach().double(), res.num_tokens.sum().double()])
    if sharded:
        dist.all_reduce(sums)
    optimizer.step()
    optimizer.zero_grad()
    return float(sums[0] / sums[1])


def save(model, optimizer, name):
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({{"model": model_state, "optim": optimizer_state}}, checkpoint_id=os.path.join(out, name))


def full_weights(model):
    if not sharded:
        return {{k: v.detach().clone() for k, v in model.state_dict().items()}}
    return dict(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)))


model, optimizer = build()
report = {{"nelbo": []}}
for step in range(4):
    if step == 2 and sharded:
        save(model, optimizer, "checkpoint-2")
    report["nelbo"].append(train_step(model, optimizer, step))
if sharded:
    save(model, optimizer, "checkpoint-4")
    report["local_numel"] = sum(p.to_local().numel() for p in model.parameters())
    resumed, resumed_optimizer = build()
    model_state, optimizer_state = get_state_dict(resumed, resumed_optimizer)
    state = {{"model": model_state, "optim": optimizer_state}}
    dcp.load(state, checkpoint_id=os.path.join(out, "checkpoint-2"))
    set_state_dict(resumed, resumed_optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    report["resumed_nelbo"] = [train_step(resumed, resumed_optimizer, step) for step in (2, 3)]
    final, resumed_final = full_weights(model), full_weights(resumed)
    report["resumed_max_difference"] = max(float((resumed_final[k] - v).abs().max()) for k, v in final.items())
else:
    final = full_weights(model)
report["numel"] = sum(p.numel() for p in model.parameters())
if rank == 0:
    save_file({{k: v.clone() for k, v in final.items()}}, os.path.join(out, f"final-{{world}}.safetensors"))
    with open(os.path.join(out, f"report-{{world}}.json"), "w") as f:
        json.dump(report, f)
if sharded:
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_one_process_and_resumes_from_a_sharded_checkpoint(tmp_path):
    import torch.distributed.checkpoint as dcp

    out = tmp_path / "fsdp"
    out.mkdir()
    script = tmp_path / "fsdp_train.py"
    script.write_text(FSDP_SCRIPT.format(tests=os.path.join(REPO, "tests"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for launcher in ([], ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]):
        result = subprocess.run(
            [sys.executable, *launcher, str(script)], capture_output=True, text=True, env=env, timeout=540
        )
        assert result.returncode == 0, result.stderr[-4000:]
    single, sharded = (json.loads((out / f"report-{n}.json").read_text()) for n in (1, 2))
    assert sharded["local_numel"] < 0.6 * sharded["numel"]  # each process holds about half of the weights
    assert sharded["nelbo"] == pytest.approx(single["nelbo"], rel=1e-5)
    assert sharded["resumed_nelbo"] == pytest.approx(
        sharded["nelbo"][2:], rel=1e-6
    )  # same step, same numbers
    assert sharded["resumed_max_difference"] <= 1e-6
    single_weights, sharded_weights = (load_file(str(out / f"final-{n}.safetensors")) for n in (1, 2))
    for name, weight in single_weights.items():
        torch.testing.assert_close(sharded_weights[name], weight, rtol=1e-4, atol=1e-6, msg=name)
    # Offline conversion of the sharded checkpoint: load it into an unsharded model (no process group needed).
    model = tiny_model(randomize_schedule=False)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(out / "checkpoint-4"))
    model.load_state_dict(state["model"])
    model.save_pretrained(tmp_path / "converted")
    converted = AutoModelForMaskedLM.from_pretrained(tmp_path / "converted")
    for name, weight in converted.state_dict().items():
        torch.testing.assert_close(weight, sharded_weights[name], rtol=0, atol=0, msg=name)


# Through LoMDMTrainer and `accelerate launch --config_file training/accelerate/fsdp.yaml`: on GPUs only, because
# accelerate enables FSDP only on accelerators (on CPU it silently runs DDP: AcceleratorState keeps MULTI_CPU).
FSDP_TRAINER_SCRIPT = """\
import json, sys
from datasets import Dataset
sys.path.insert(0, {tests!r})
from helpers import tiny_model
from hf_lomdm.data import DataCollatorForMaskedDiffusion
from hf_lomdm.trainer import LoMDMTrainer, LoMDMTrainingArguments
out, resume = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
rows = [[4 + (s + i) % 16 for i in range(16)] for s in range(64)]
args = LoMDMTrainingArguments(output_dir=out, report_to=[], disable_tqdm=True, max_steps=4,
                              per_device_train_batch_size=4, learning_rate=1e-2, save_strategy="steps",
                              save_steps=2, logging_steps=1, seed=0)
trainer = LoMDMTrainer(model=tiny_model(randomize_schedule=False).train(), args=args,
                       train_dataset=Dataset.from_dict({{"input_ids": rows}}),
                       data_collator=DataCollatorForMaskedDiffusion(pad_token_id=1))
trainer.train(resume_from_checkpoint=resume)
trainer.save_model(out + "/final")
if trainer.is_world_process_zero():
    nelbo = {{log["step"]: log["nelbo"] for log in trainer.state.log_history if "nelbo" in log}}
    with open(out + "/report.json", "w") as f:
        json.dump({{"fsdp": trainer.is_fsdp_enabled, "world": trainer.args.world_size, "nelbo": nelbo}}, f)
"""


@pytest.mark.slow
@require_torch_multi_accelerator
def test_fsdp_yaml_trains_like_ddp_resumes_and_converts_a_sharded_checkpoint(tmp_path):
    script = tmp_path / "fsdp_trainer.py"
    script.write_text(FSDP_TRAINER_SCRIPT.format(tests=os.path.join(REPO, "tests")))
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")

    def launch(config: str, out: str, flags: tuple[str, ...] = (), resume: str | None = None) -> dict:
        config_file = os.path.join(REPO, "training", "accelerate", config)
        command = [accelerate, "launch", "--config_file", config_file, "--num_processes", "2"]
        command += ["--mixed_precision", "no", *flags, str(script), str(tmp_path / out)]
        command += [] if resume is None else [str(tmp_path / resume)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=540)
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads((tmp_path / out / "report.json").read_text())

    fsdp, ddp = launch("fsdp.yaml", "fsdp"), launch("multi_gpu.yaml", "ddp")
    assert fsdp["fsdp"] and not ddp["fsdp"] and fsdp["world"] == ddp["world"] == 2
    assert list(fsdp["nelbo"].values()) == pytest.approx(list(ddp["nelbo"].values()), rel=1e-4)
    final = dict(AutoModelForMaskedLM.from_pretrained(tmp_path / "fsdp" / "final").named_parameters())
    for name, weight in AutoModelForMaskedLM.from_pretrained(tmp_path / "ddp" / "final").named_parameters():
        torch.testing.assert_close(final[name], weight, rtol=1e-4, atol=1e-5, msg=name)
    # Resume from the FSDP checkpoint: the same steps 3 and 4, the same weights.
    resumed = launch("fsdp.yaml", "resumed", resume="fsdp/checkpoint-2")
    assert [resumed["nelbo"][s] for s in ("3", "4")] == pytest.approx([fsdp["nelbo"][s] for s in ("3", "4")])
    resumed_model = AutoModelForMaskedLM.from_pretrained(tmp_path / "resumed" / "final")
    for name, weight in resumed_model.named_parameters():
        torch.testing.assert_close(weight, final[name], rtol=1e-5, atol=1e-6, msg=name)
    # Sharded checkpoints (one file per process) merge into a plain folder that `from_pretrained` loads.
    launch("fsdp.yaml", "sharded", flags=("--fsdp_state_dict_type", "SHARDED_STATE_DICT"))
    merged = tmp_path / "merged"
    shards = tmp_path / "sharded" / "checkpoint-2" / "pytorch_model_fsdp_0"
    command = [accelerate, "merge-weights", str(shards), str(merged)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    tiny_model().config.save_pretrained(merged)
    reference = load_file(str(tmp_path / "fsdp" / "checkpoint-2" / "model.safetensors"))
    for name, weight in AutoModelForMaskedLM.from_pretrained(merged).state_dict().items():
        torch.testing.assert_close(weight, reference[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_gpu_smoke_script_runs_every_stage_as_a_cpu_dry_run(tmp_path):
    output = tmp_path / "gpu_smoke.json"
    command = [sys.executable, os.path.join(REPO, "benchmarks", "gpu_smoke.py"), "--device", "cpu", "--quick"]
    result = subprocess.run(
        [*command, "--output", str(output)], capture_output=True, text=True, timeout=540, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(output.read_text())
    assert record["train"]["steps"] == 3 and math.isfinite(record["train"]["eval_nelbo_after"])
    assert record["train"]["attention"] == "sdpa"
    orders = record["generate"]["orders"]
    assert set(orders) == set(ORDERS) and all(o["finished_fraction"] == 1.0 for o in orders.values())
    assert "| main | lomdm | float32 |" in record["throughput"]["table"]
    assert "skipped" in record["fsdp"]  # one CPU, no GPUs


# ---- benchmarks/scaling.py: the FLOPs model and the projection (pure arithmetic, nothing timed) ------------


@pytest.fixture
def scaling(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
    import scaling

    return scaling


def test_step_flops_per_token_match_a_hand_count(scaling):
    # d 4, 1 layer, 2 heads of which 1 kv head (k, v are 4 x 2), SwiGLU 8, V 10; scheduler SwiGLU 4, head 2; L 3.
    arch = scaling.Architecture(4, 1, 2, 1, 8, 10, 4, 2)
    layer = 2 * (2 * 16 + 2 * 4 * 2 + 3 * 4 * 8) + 4 * 3 * 4  # weights 144 -> 288, attention 48
    head = 2 * 4 * 10 * 0.5  # masked positions only
    scheduler = 3 * (2 * (2 * 16 + 2 * 4 * 2 + 3 * 4 * 4) + 4 * 3 * 4 + 2 * 4 * 2)
    mdlm, lomdm = scaling.MODES["mdlm"], scaling.MODES["lomdm"]
    assert scaling.step_flops_per_token(arch, 3, mdlm) == 3 * (layer + head) == 1128
    assert scaling.step_flops_per_token(arch, 3, mdlm, lora=True) == 2 * (layer + head)
    assert scaling.step_flops_per_token(arch, 3, mdlm, attention=False) == 3 * (layer - 48 + head)
    # K = 2 noisy passes with g_ψ each, the clean pass without gradients, g_φ with gradients
    assert (
        scaling.step_flops_per_token(arch, 3, lomdm) == 2 * 3 * (layer + head) + layer + 3 * scheduler == 4896
    )


def test_projection_scales_linearly_in_work_and_inversely_in_gpus(scaling):
    flops, peak = 3.6e18, 1e15
    assert scaling.gpu_hours(flops, peak, 0.5) == pytest.approx(2.0)
    assert scaling.wall_hours(2 * flops, peak, 0.5, 1, 1.0) == pytest.approx(
        2 * scaling.wall_hours(flops, peak, 0.5, 1, 1.0)
    )
    assert scaling.wall_hours(flops, peak, 0.5, 8, 1.0) == pytest.approx(
        scaling.wall_hours(flops, peak, 0.5, 1, 1.0) / 8
    )
    assert scaling.wall_hours(flops, peak, 0.5, 8, 0.8) == pytest.approx(2.0 / (8 * 0.8))
    args = scaling.argparse.Namespace(
        adapt_length=1024,
        adapt_tokens=10**9,
        masked_fraction=0.5,
        gpus=["H100-SXM"],
        mfu=[0.3, 0.45],
        efficiency_8=0.9,
    )
    rows = {(r["run"], r["mode"]): r for r in scaling.project(args)}
    doubled = {
        (r["run"], r["mode"]): r
        for r in scaling.project(scaling.argparse.Namespace(**{**vars(args), "adapt_tokens": 2 * 10**9}))
    }
    row = rows["SmolLM2-135M", "lomdm"]
    assert doubled["SmolLM2-135M", "lomdm"]["H100-SXM x1 hours"] == pytest.approx(
        [2 * h for h in row["H100-SXM x1 hours"]]
    )
    assert row["H100-SXM x1 hours"] == pytest.approx([8 * 0.9 * h for h in row["H100-SXM x8 hours"]])
    assert row["H100-SXM x1 hours"][0] == pytest.approx(row["H100-SXM x1 hours"][1] * 0.45 / 0.3)  # 1 / MFU
    paper = rows["OWT 12x768", "mdlm"]
    assert paper["tokens"] == 1_000_000 * 512 * 1024
    with pytest.raises(ValueError, match="mfu"):
        scaling.gpu_hours(flops, peak, 0.0)


# ---- DDP on the causal-LM conversion path -----------------------------------------------------------------

# A tiny Llama converted with `from_causal_lm`, wrapped in a LoRA adapter (`lomdm_lora_config`: LoRA on the backbone,
# the new schedulers trained in full), trained 3 steps of 8 rows by `LoMDMTrainer`: on 2 processes (4 rows each) or
# on one (two micro-batches of 4). Rows are taken in order, and the noise of global micro-batch j of a step is the
# same in both runs (process j under DDP, micro-step j in one process), so the two must compute the same NELBO.
# `rloo` keeps no per-process state (the `tcv` table is per process). The adapter is saved at the end.
CAUSAL_DDP_SCRIPT = """\
import json, os, sys, torch
from datasets import Dataset
from peft import get_peft_model
sys.path.insert(0, {tests!r})
from helpers import tiny_causal_lm
from hf_lomdm import LoMDMForMaskedDiffusion
from hf_lomdm.data import DataCollatorForMaskedDiffusion
from hf_lomdm.lora import lomdm_lora_config
from hf_lomdm.trainer import LoMDMTrainer, LoMDMTrainingArguments
torch.set_num_threads(1)
out = sys.argv[1]


class SameNoise(LoMDMTrainer):
    def _training_generator(self, device):
        super()._training_generator(device)  # counts the micro-steps
        index = self.args.process_index + self._micro_step
        return torch.Generator(device).manual_seed(1000 * self.state.global_step + index)


model = LoMDMForMaskedDiffusion.from_causal_lm(tiny_causal_lm(), max_position_embeddings=16).train()
model = get_peft_model(model, lomdm_lora_config(model, r=4, lora_alpha=8))
world = int(os.environ.get("WORLD_SIZE", "1"))
args = LoMDMTrainingArguments(output_dir=out, use_cpu=True, report_to=[], disable_tqdm=True, max_steps=3,
                              per_device_train_batch_size=4, gradient_accumulation_steps=2 // world,
                              learning_rate=1e-2, estimator="rloo", save_strategy="no", logging_steps=1, seed=0,
                              train_sampling_strategy="sequential", dataloader_pin_memory=False)
rows = [[4 + (s * 7 + i * 3) % 46 for i in range(16)] for s in range(24)]
trainer = SameNoise(model=model, args=args, train_dataset=Dataset.from_dict({{"input_ids": rows}}),
                    data_collator=DataCollatorForMaskedDiffusion(pad_token_id=0))
trainer.train()
trainer.save_model(out + "/adapter")
if trainer.is_world_process_zero():
    nelbo = [log["nelbo"] for log in trainer.state.log_history if "nelbo" in log]
    with open(out + "/report.json", "w") as f:
        json.dump({{"world": trainer.args.world_size, "nelbo": nelbo}}, f)
"""


@pytest.mark.slow
@pytest.mark.ci
def test_ddp_on_a_converted_causal_lm_with_lora_matches_one_process_and_reloads(tmp_path):
    script = tmp_path / "causal_ddp.py"
    script.write_text(CAUSAL_DDP_SCRIPT.format(tests=os.path.join(REPO, "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    config_file = os.path.join(REPO, "training", "accelerate", "cpu.yaml")
    reports = {}
    for name, command in (
        ("one", [sys.executable, str(script)]),
        ("ddp", [accelerate, "launch", "--config_file", config_file, "--num_processes", "2", str(script)]),
    ):
        result = subprocess.run(
            [*command, str(tmp_path / name)],
            capture_output=True,
            text=True,
            env=env,
            timeout=540,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert (reports["one"]["world"], reports["ddp"]["world"]) == (1, 2)
    assert len(reports["ddp"]["nelbo"]) == 3
    assert reports["ddp"]["nelbo"] == pytest.approx(reports["one"]["nelbo"], rel=1e-5)
    assert reports["ddp"]["nelbo"][0] != pytest.approx(reports["ddp"]["nelbo"][2], rel=1e-3)  # it trained

    # The adapter reloads onto a fresh conversion of the same causal LM; merged, it is a plain LoMDM checkpoint.
    def converted():
        return LoMDMForMaskedDiffusion.from_causal_lm(tiny_causal_lm(), max_position_embeddings=16)

    adapters = {
        name: PeftModel.from_pretrained(converted(), tmp_path / name / "adapter").eval() for name in reports
    }
    trained = dict(adapters["one"].named_parameters())
    for name, weight in adapters["ddp"].named_parameters():
        torch.testing.assert_close(weight, trained[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(
        "lora_B" in name and weight.abs().sum() > 0 for name, weight in trained.items()
    )  # LoRA moved from its zero start
    z = torch.tensor([[5, 50, 7, 50, 9, 50, 11, 12]])  # 50: the mask token the conversion appended
    expected = adapters["ddp"](z).logits
    merged = adapters["ddp"].merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(reloaded(z).logits, expected, rtol=1e-5, atol=1e-5)
