"""Bad input to any command-line tool (the console scripts and `examples/*.py`): one line on stderr naming the
problem, exit status 2, no traceback (unless `--debug`), and nothing expensive done first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_model, word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training/configs/shakespeare-tiny.yaml"
TRAIN = ["-m", "hf_lomdm.cli.train"]
EVAL = ["-m", "hf_lomdm.cli.evaluate"]
CONVERT = ["-m", "hf_lomdm.cli.convert"]
# One interpreter start (torch + transformers imports) per test: minutes in all, so CI runs them with the slow ones.
pytestmark = [pytest.mark.slow, pytest.mark.ci]


def _run(argv, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("LOMDM_DEBUG", None)
    return subprocess.run(
        [sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=cwd, env=env, check=False
    )


def _usage_error(argv, cwd: Path, *expected: str) -> str:
    """Run `argv`; assert exit status 2, no traceback, and one `...: error: ...` line holding `expected`."""
    proc = _run(argv, cwd)
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint")
    tokenizer = word_tokenizer()
    tiny_model(vocab_size=len(tokenizer), max_position_embeddings=8).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---- a missing local folder is named as such --------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [*EVAL, "runs/does-not-exist"],
        [*CONVERT, "runs/does-not-exist", "out"],
        [*TRAIN, RECIPE, "--model_name_or_path", "runs/does-not-exist"],
        [ROOT / "examples/generate.py", "--model", "runs/does-not-exist"],
        [ROOT / "examples/infill.py", "--model", "runs/does-not-exist"],
        [ROOT / "examples/plot_order.py", "--model", "./runs/does-not-exist"],
        [ROOT / "examples/lora_finetune.py", "--model", "runs/does-not-exist"],
        [ROOT / "examples/push_to_hub.py", "--model", "runs/does-not-exist", "--repo", "user/name"],
    ],
    ids=["eval", "convert", "train", "generate", "infill", "plot_order", "lora_finetune", "push_to_hub"],
)
def test_missing_folder_says_no_such_folder(argv, tmp_path):
    if "plot_order" in str(argv[0]):
        pytest.importorskip("matplotlib")  # plot_order checks its optional dependency first
    _usage_error(argv, tmp_path, "does-not-exist", "no such folder")


def test_truncated_weights_name_the_file(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in checkpoint.iterdir():
        data = file.read_bytes()
        (broken / file.name).write_bytes(data[: len(data) // 2] if file.suffix == ".safetensors" else data)
    _usage_error([*EVAL, broken], tmp_path, str(broken / "model.safetensors"), "truncated")


# ---- negative numbers reach validation, in either flag spelling -------------------------------------------


@pytest.mark.parametrize("flag", ["--learning_rate", "--learning-rate"])
def test_negative_learning_rate_is_validated_not_read_as_a_flag(flag, tmp_path):
    _usage_error([*TRAIN, RECIPE, flag, "-1e-3", "--output_dir", tmp_path / "run"], tmp_path, "learning_rate")


def test_bad_recipe_value_fails_before_any_data_or_model_work(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    output_dir = tmp_path / "run"
    recipe.write_text(RECIPE.read_text() + f"\nlearning_rate: -1.0e-3\noutput_dir: {output_dir}\n")
    _usage_error([*TRAIN, recipe], tmp_path, "`learning_rate` must be a finite number > 0, got -0.001")
    assert not (output_dir / "tokenizer.json").exists()  # the tokenizer is trained and saved first otherwise


@pytest.mark.parametrize("flag", ["--time_samples", "--time-samples"])
def test_eval_rejects_a_negative_count_in_either_spelling(flag, checkpoint, tmp_path):
    _usage_error([*EVAL, checkpoint, flag, "-2"], tmp_path, "time_samples", "must be an integer >= 1")


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("tabular.py", ["--synthetic", "--lr", "-1"], "--lr must be > 0, got -1.0"),
        ("lora_finetune.py", ["--model", "MODEL", "--eval_pairs", "-3"], "--eval-pairs must be >= 1, got -3"),
        ("infill.py", ["--model", "MODEL", "--span", "-1"], "--span must be >= 1, got -1"),
    ],
)
def test_examples_validate_negative_values_in_either_spelling(script, argv, message, checkpoint, tmp_path):
    argv = [str(checkpoint) if arg == "MODEL" else arg for arg in argv]
    _usage_error([ROOT / "examples" / script, *argv], tmp_path, message)


# ---- other usage errors -----------------------------------------------------------------------------------


def test_recipe_without_yaml_extension_gets_a_hint(tmp_path):
    stem = str(RECIPE.with_suffix("").relative_to(ROOT))
    _usage_error([*TRAIN, stem], ROOT, "has no .yaml extension", f"{stem}.yaml")


@pytest.mark.parametrize(
    "argv", [[*TRAIN, RECIPE, "--max_stepz", "3"], [*EVAL, "ckpt", "--max_steps", "3"]], ids=["train", "eval"]
)
def test_unknown_flag_is_one_line_without_the_usage(argv, tmp_path):
    line = _usage_error(argv, tmp_path, "--max_step")
    assert "usage:" not in line


def test_tabular_csv_too_small_to_split_is_a_usage_error(tmp_path):
    table = tmp_path / "one_row.csv"
    table.write_text("a,b\n1,x\n")
    _usage_error([ROOT / "examples/tabular.py", "--csv", table], tmp_path, "1 rows give 0 validation")


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = _run([*EVAL, "runs/does-not-exist", "--debug"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UsageError" in proc.stderr


@pytest.mark.parametrize(
    "argv, default",
    [
        ([*EVAL, "--help"], "(default: 256)"),
        ([*CONVERT, "--help"], "(default: lomdm)"),
        ([*TRAIN, "--help"], "(default: 4096)"),
        ([ROOT / "examples/tabular.py", "--help"], "(default: outputs/tabular)"),
    ],
    ids=["eval", "convert", "train", "tabular"],
)
def test_help_shows_defaults(argv, default, tmp_path):
    proc = _run(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert default in " ".join(proc.stdout.split())
