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
        "--output",
        str(saved / "quick.json"),
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
    assert "NELBO (importance)" in proc.stderr  # the progress bar of the long pass


@pytest.mark.parametrize(
    "checkpoint", ["./no/such/run", "/no/such/run", "runs/no-such/checkpoint-5", "bad id!"]
)
def test_missing_checkpoint_folder_is_a_clear_usage_error(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([checkpoint])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"checkpoint {checkpoint!r}: no such folder" in err and "Repo id must" not in err
    assert len(err.strip().splitlines()) == 1


def test_valid_repo_id_that_cannot_be_loaded_is_named_as_a_missing_folder(monkeypatch, capsys):
    import hf_lomdm.cli.evaluate

    def unreachable(name, **kwargs):  # what the Hub client raises offline, without the network round trips
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}.")

    monkeypatch.setattr(hf_lomdm.cli.evaluate.AutoTokenizer, "from_pretrained", unreachable)
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-user/no-such-model"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "checkpoint 'no-such-user/no-such-model': no such folder, and no Hub repo" in err


def test_rows_default_is_a_sample_and_all_is_the_whole_text(saved, tmp_path, capsys):
    from hf_lomdm.cli.evaluate import DEFAULT_ROWS, build_parser

    assert build_parser().parse_args(["ckpt"]).rows == DEFAULT_ROWS
    assert f"default: {DEFAULT_ROWS}" in build_parser().format_help()
    every = run([*quick_argv(saved), "--rows", "all"])["nelbo"]["num_sequences"]
    two = run([*quick_argv(saved), "--rows", "2"])["nelbo"]["num_sequences"]
    assert every > 2 and two == 2


def test_partial_report_is_saved_when_a_later_step_fails(saved, tmp_path, monkeypatch, capsys):
    import hf_lomdm.cli.evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("context use broke")

    monkeypatch.setattr(hf_lomdm.cli.evaluate, "context_use", broken)
    output = tmp_path / "partial.json"
    argv = [str(saved / "ckpt"), "--text_file", str(saved / "unseen.txt"), "--time_samples", "2"]
    with pytest.raises(RuntimeError, match="context use broke"):
        run([*argv, "--output", str(output)])
    partial = json.loads(output.read_text())
    assert "nelbo" in partial and "context_use" not in partial
    assert "partial results saved" in capsys.readouterr().err


def test_missing_judge_fails_before_the_nelbo_pass(saved, monkeypatch):
    import hf_lomdm.cli.evaluate

    def no_judge(name):
        raise ImportError("No module named 'gguf'")

    def never(*args, **kwargs):
        raise AssertionError("the NELBO pass ran before the judge was checked")

    monkeypatch.setattr(hf_lomdm.cli.evaluate, "load_judge", no_judge)
    monkeypatch.setattr(hf_lomdm.cli.evaluate, "nelbo_perplexity", never)
    with pytest.raises(ValueError, match="--judge smollm2: No module named 'gguf'"):
        run([*quick_argv(saved), "--generate", "2"])


def test_unknown_order_fails_before_the_nelbo_pass(saved, monkeypatch):
    import hf_lomdm.cli.evaluate

    monkeypatch.setattr(hf_lomdm.cli.evaluate, "nelbo_perplexity", None)  # any call would fail differently
    with pytest.raises(ValueError, match=r"--orders: unknown \['lerned'\]"):
        run([*quick_argv(saved), "--generate", "2", "--orders", "learned,lerned"])
