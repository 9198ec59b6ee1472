"""Smoke tests: every example runs as documented, on a tiny checkpoint with a real BPE tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_model
from hub_server import USER, LocalHub

from hf_lomdm.data import shakespeare_plays, train_bpe_tokenizer

ROOT = Path(__file__).parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.ci]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    texts = list(shakespeare_plays().values())[:3]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    model = tiny_model(
        schedule="lomdm",
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    path = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _run(*argv, env=None, cwd=None):
    result = subprocess.run(
        [sys.executable, *map(str, argv)],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr  # progress bars and warnings land on stderr


def test_generate_example_runs():
    output = _run(ROOT / "examples/generate.py")
    # The random model may fill in any byte, newlines included: cut at the next section's label, not at a line.
    infilled = output.split("infilled:", 1)[1].split("\nbatched (", 1)[0]
    assert infilled.endswith(" to be: that is the question")  # the masks are filled, nothing is appended


def test_generate_example_prints_a_masked_token_as_one_character(checkpoint):
    output = _run(ROOT / "examples/generate.py", "--model", checkpoint)
    assert "completion:" in output and "<|mask|>" not in output
    canvases = output.split("passes:", 1)[1].split("infilled:", 1)[0]
    assert "_" in canvases  # the early canvases are mostly masked


def test_infill_example_keeps_the_given_tokens(checkpoint):
    out = _run(ROOT / "examples/infill.py", "--model", checkpoint, "--span", "3", "--samples", "2")
    assert out.count("filled tokens") == 2


def test_plot_order_example_writes_a_png(checkpoint, tmp_path):
    pytest.importorskip("matplotlib")
    _run(
        ROOT / "examples/plot_order.py",
        "--model",
        checkpoint,
        "--max-new-tokens",
        "16",
        "--output",
        tmp_path / "order.png",
    )
    assert (tmp_path / "order.png").stat().st_size > 1000


def test_lora_finetune_example_reports_nelbo_before_and_after(checkpoint, tmp_path):
    out = _run(
        ROOT / "examples/lora_finetune.py",
        "--model",
        checkpoint,
        "--output",
        tmp_path / "lora",
        "--pairs",
        "64",
        "--eval-pairs",
        "8",
        "--steps",
        "2",
    )
    assert "before" in out and "after" in out and (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    assert "| step | training NELBO (nats/token) | of it L_velocity |" in out and "{'" not in out


def test_tabular_example_prints_tables_and_writes_results(tmp_path):
    out = _run(
        ROOT / "examples/tabular.py",
        "--synthetic",
        "--schedules",
        "linear,per_position",
        "--steps",
        "4",
        "--eval-steps",
        "2",
        "--num-samples",
        "200",
        "--final-time-samples",
        "2",
        "--output-dir",
        tmp_path,
    )
    assert "| schedule | NELBO per row (nats) | best step | Shape | Trend | time (s) |" in out
    assert "| column | per_position e (rank) |" in out
    assert "{'" not in out and "Writing model shards" not in out  # no raw log dicts, no progress bars
    assert (tmp_path / "results.json").is_file()


def test_push_to_hub_example_round_trips_through_a_local_hub(checkpoint, tmp_path):
    with LocalHub() as hub:
        env = {
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": "hf_local_test_token",
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "home"),
            "HF_MODULES_CACHE": str(tmp_path / "modules"),
        }
        out = _run(
            ROOT / "examples/push_to_hub.py", "--model", checkpoint, "--repo", f"{USER}/example", env=env
        )
        assert "model.safetensors" in hub.repos[f"{USER}/example"].files
    assert "a sample from the Hub copy" in out
    torch.manual_seed(0)  # keep pytest-randomised state tidy for the next module
