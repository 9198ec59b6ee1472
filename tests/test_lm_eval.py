"""lm-evaluation-harness adapter, offline, on local YAML tasks and a tiny checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import SENTENCES, tiny_model, word_tokenizer

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from hf_lomdm.evaluation import sequence_nelbo_samples
from hf_lomdm.lm_eval_adapter import LoMDMEvalHarness
from hf_lomdm.objective import lomdm_loss

LONG_MC = [  # continuations of 10-11 tokens, longer than the max_length=6 the tests below score them with
    {
        "question": "the cat sat on",
        "choices": [" the mat . a dog ran in the park .", " red sky car blue tree green red sky car blue"],
        "answer": 0,
    },
    {
        "question": "a dog ran in",
        "choices": [
            " green car blue red tree sky green car blue red",
            " the park . the cat sat on the mat .",
        ],
        "answer": 1,
    },
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model overfit on SENTENCES (each preceded by BOS), saved with its tokenizer."""
    tokenizer = word_tokenizer()
    model = tiny_model(
        schedule="linear", randomize_schedule=False, vocab_size=len(tokenizer), max_position_embeddings=32
    ).train()
    data = torch.tensor([[2] + tokenizer(s, add_special_tokens=False)["input_ids"] for s in SENTENCES])
    labels = data.clone()
    labels[:, 0] = -100  # BOS is context
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        optimizer.zero_grad()
        lomdm_loss(
            model,
            data.repeat(4, 1),
            labels=labels.repeat(4, 1),
            num_samples=1,
            estimator="plain",
            generator=generator,
        ).loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("ckpt")
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_loglikelihood_ranks_trained_continuation_above_a_random_one(checkpoint):
    lm = LoMDMEvalHarness(pretrained=str(checkpoint), mc_samples=16, batch_size=64)
    requests = [
        Instance("loglikelihood", {}, ("the cat sat on", " the mat ."), 0),
        Instance("loglikelihood", {}, ("the cat sat on", " blue sky car"), 1),
    ]
    (trained, greedy), (random, _) = lm.loglikelihood(requests)
    assert math.isfinite(trained) and trained > random + 3
    assert greedy  # the overfit model reproduces the sentence in one pass


def test_loglikelihood_rolling_is_a_sum_over_windows(checkpoint):
    lm = LoMDMEvalHarness(pretrained=str(checkpoint), mc_samples=8, max_length=6)
    text = "the cat sat on the mat . a dog ran in the park ."  # 14 tokens: three windows of <= 5 new tokens
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert math.isfinite(total) and total < 0


def test_windows_cover_each_continuation_token_once_with_the_nearest_context(checkpoint):
    lm = LoMDMEvalHarness(pretrained=str(checkpoint), max_length=6)
    bos = lm.prefix
    cases = [
        (list(range(100, 104)), list(range(200, 214))),  # 14 tokens -> ceil(14 / 5) = 3 windows: 4, 5, 5
        (list(range(100, 120)), [200, 201]),  # context alone longer than max_length
        ([100], [200, 201]),  # fits: one window, the whole context
        ([], list(range(200, 211))),  # rolling: no context, 11 tokens -> 3, 4, 4
        ([100], []),
    ]
    for context, continuation in cases:
        windows = lm._windows(context, continuation)
        sizes = [len(window) for _, window in windows]
        assert [t for _, window in windows for t in window] == continuation  # each token once, in order
        assert (
            len(windows) == math.ceil(len(continuation) / 5)
            and max(sizes, default=0) - min(sizes, default=0) <= 1
        )
        tokens, done = bos + context, 0
        for window_context, window in windows:
            before = tokens + continuation[:done]  # everything clean before the window
            assert 1 <= len(window) <= 5 and len(window_context) == min(len(before), 6 - len(window))
            assert window_context == before[len(before) - len(window_context) :]  # the nearest tokens
            done += len(window)
    assert lm._windows([100], [200, 201]) == [(bos + [100], [200, 201])]


def test_windowed_loglikelihood_is_the_one_pass_elbo_when_it_fits_and_finite_when_not(checkpoint):
    lm = LoMDMEvalHarness(pretrained=str(checkpoint), mc_samples=8, max_length=8)
    context, continuation = lm._encode("the cat sat on"), lm._encode(" the mat .")
    ids = torch.tensor(lm.prefix + context + continuation)  # 8 tokens: fits in one pass
    labels = ids.clone()
    labels[: 1 + len(context)] = -100
    samples, _ = sequence_nelbo_samples(
        lm.model,
        [{"input_ids": ids, "labels": labels}],
        time_samples=8,
        batch_size=lm.batch_size,
        time_sampling="importance",
        generator=torch.Generator().manual_seed(0),
    )
    lm.generator = torch.Generator().manual_seed(0)
    ((fits, _),) = lm.loglikelihood([Instance("loglikelihood", {}, ("the cat sat on", " the mat ."), 0)])
    assert fits == pytest.approx(-samples.mean().item(), rel=1e-6)

    long = " the mat . a dog ran in the park . the bird sang a sweet song ."  # 18 tokens > max_length
    ((elbo, greedy),) = lm.loglikelihood([Instance("loglikelihood", {}, ("the cat sat on", long), 0)])
    assert math.isfinite(elbo) and elbo < fits < 0 and isinstance(greedy, bool)


MULTIPLE_CHOICE_TASK = """\
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
"""


def _write_tasks(directory):
    (directory / "mc.jsonl").write_text(
        "\n".join(
            json.dumps(d)
            for d in [
                {"question": "the cat sat on", "choices": [" the mat .", " blue sky car"], "answer": 0},
                {"question": "a dog ran in", "choices": [" red tree green", " the park ."], "answer": 1},
            ]
        )
    )
    (directory / "long_mc.jsonl").write_text("\n".join(json.dumps(d) for d in LONG_MC))
    (directory / "text.jsonl").write_text("\n".join(json.dumps({"text": s}) for s in SENTENCES))
    for name, data in (("tiny_mc", "mc.jsonl"), ("tiny_long_mc", "long_mc.jsonl")):
        _write_task(directory, name, data, MULTIPLE_CHOICE_TASK)
    _write_task(
        directory,
        "tiny_ppl",
        "text.jsonl",
        """\
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{text}}"
        metric_list:
          - metric: word_perplexity
          - metric: bits_per_byte
        """,
    )
    _write_task(
        directory,
        "tiny_gen",
        "mc.jsonl",
        """\
        output_type: generate_until
        doc_to_text: "{{question}}"
        doc_to_target: "{{choices[answer]}}"
        generation_kwargs:
          until: ["."]
          max_gen_toks: 3
        metric_list:
          - metric: exact_match
        """,
    )


def _write_task(directory, name: str, data_file: str, body: str) -> None:
    """A local lm-eval task over `directory / data_file` (JSON lines, one `test` split)."""
    header = (
        f"task: {name}\ndataset_path: json\ntest_split: test\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / data_file}\n"
    )
    (directory / f"{name}.yaml").write_text(header + textwrap.dedent(body))


def _evaluate_local_tasks(checkpoint, directory, tasks: list[str], **harness_kwargs) -> dict:
    """`simple_evaluate` of the local tasks of `_write_tasks` with a `LoMDMEvalHarness` on `checkpoint`."""
    _write_tasks(directory)
    lm = LoMDMEvalHarness(pretrained=str(checkpoint), mc_samples=8, batch_size=16, **harness_kwargs)
    return simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(directory)))[
        "results"
    ]


def test_harness_runs_offline_on_local_tasks(checkpoint, tmp_path):
    results = _evaluate_local_tasks(checkpoint, tmp_path, ["tiny_mc", "tiny_ppl", "tiny_gen"], steps=3)
    assert results["tiny_mc"]["acc,none"] == 1.0
    assert math.isfinite(results["tiny_ppl"]["word_perplexity,none"])
    assert math.isfinite(results["tiny_ppl"]["bits_per_byte,none"])
    assert 0.0 <= results["tiny_gen"]["exact_match,none"] <= 1.0


def test_harness_completes_when_continuations_exceed_max_length(checkpoint, tmp_path):
    # issue 12: one continuation longer than max_length used to abort the run (every metric NaN)
    results = _evaluate_local_tasks(
        checkpoint, tmp_path, ["tiny_long_mc", "tiny_mc", "tiny_ppl"], max_length=6
    )
    assert 0.0 <= results["tiny_long_mc"]["acc,none"] <= 1.0  # not NaN; with one token of context per
    assert 0.0 <= results["tiny_mc"]["acc,none"] <= 1.0  # window the tiny model cannot rank, so no target
    assert math.isfinite(results["tiny_ppl"]["word_perplexity,none"])
    assert math.isfinite(results["tiny_ppl"]["bits_per_byte,none"])


def test_module_cli_runs_the_harness_with_the_model_registered(checkpoint, tmp_path):
    _write_tasks(tmp_path)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "hf_lomdm.lm_eval_adapter",
        "--model",
        "lomdm",
        "--model_args",
        f"pretrained={checkpoint},mc_samples=4",
        "--tasks",
        "tiny_mc",
        "--include_path",
        str(tmp_path),
        "--output_path",
        str(out),
    ]
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = list(out.rglob("results_*.json"))
    assert "tiny_mc" in json.loads(results_file.read_text())["results"]
