"""`lomdm-eval`: the report (JSON + table), exit status 0 as a console script, clear errors for missing folders."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_model, word_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from hf_lomdm.cli.evaluate import main, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny LoMDM checkpoint, a tiny judge and a text file to evaluate on."""
    root = tmp_path_factory.mktemp("eval")
    tokenizer = word_tokenizer()
    model = tiny_model(schedule="lomdm", vocab_size=len(tokenizer), max_position_embeddings=8)
    model.save_pretrained(root / "ckpt")
    tokenizer.save_pretrained(root / "ckpt")
    judge = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    judge.save_pretrained(root / "judge")
    tokenizer.save_pretrained(root / "judge")
    (root / "unseen.txt").write_text(" ".join(["the cat sat on the mat ."] * 12))
    return root


def test_report_has_bound_context_use_and_generation_quality(saved, tmp_path, capsys):
    report = run(
        [
            str(saved / "ckpt"),
            "--text_file",
            str(saved / "unseen.txt"),
            "--time_samples",
            "4",
            "--include_uniform_eps",
            "--generate",
            "2",
            "--steps",
            "4",
            "--judge",
            str(saved / "judge"),
            "--output",
            str(tmp_path / "report.json"),
        ]
    )
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    nelbo = report["nelbo"]
    assert nelbo["num_sequences"] > 1 and nelbo["ppl_bound"] == pytest.approx(math.exp(nelbo["nelbo"]))
    assert nelbo["ppl_uniform_eps"] is not None
    context = report["context_use"]
    assert list(context["loss"]) == ["one", "15%", "50%", "85%", "all"] and 0 < context["ratio"] < 2
    for order in ("learned", "random"):
        generation = report["generation"][order]
        assert math.isfinite(generation["gen_ppl"]) and generation["nfe"] <= 4
    table = capsys.readouterr().out
    assert "PPL bound" in table and "context ratio" in table


def quick_argv(saved) -> list[str]:
    """`lomdm-eval` arguments for a quick run: the saved checkpoint on the unseen text, no context use."""
    return [
        str(saved / "ckpt"),
        "--text_file",
        str(saved / "unseen.txt"),
        "--time_samples",
        "2",
        "--no-context_use",
    ]


def test_main_returns_none_and_context_use_can_be_switched_off(saved, capsys):
    assert main(quick_argv(saved)) is None
    assert "context ratio" not in capsys.readouterr().out


def test_console_script_exits_zero_without_dumping_the_report(saved):
    # what the `lomdm-eval` entry point runs: sys.exit(main())
    code = "import sys; from hf_lomdm.cli.evaluate import main; sys.exit(main())"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, *quick_argv(saved)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PPL bound" in proc.stdout and "{'checkpoint'" not in proc.stderr


@pytest.mark.parametrize(
    "checkpoint", ["./no/such/run", "/no/such/run", "runs/no-such/checkpoint-5", "bad id!"]
)
def test_missing_checkpoint_folder_is_a_clear_usage_error(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([checkpoint])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"checkpoint folder {checkpoint!r} does not exist" in err and "Repo id must" not in err


def test_valid_repo_id_that_cannot_be_loaded_names_the_checkpoint(monkeypatch):
    import hf_lomdm.cli.evaluate

    def unreachable(name, **kwargs):  # what the Hub client raises offline, without the network round trips
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}.")

    monkeypatch.setattr(hf_lomdm.cli.evaluate.AutoTokenizer, "from_pretrained", unreachable)
    with pytest.raises(ValueError, match="cannot load checkpoint 'no-such-user/no-such-model'"):
        main(["no-such-user/no-such-model"])
