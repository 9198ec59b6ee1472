"""`bf16: auto` on a CPU with bf16 units: the calibration's decision, its wiring into `lomdm-train`, and one real
calibration of a tiny model (which must leave the model and the random state as they were)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import CLI_RECIPE, tiny_model, training_arguments
from huggingface_hub import ModelCard

import hf_lomdm.cli.recipe as recipe_module
import hf_lomdm.cli.train as train_module
from hf_lomdm import runtime
from hf_lomdm.cli.recipe import parse_recipe
from hf_lomdm.data import DataCollatorForMaskedDiffusion
from hf_lomdm.precision import (
    BF16_SPEEDUP_MARGIN,
    Bf16Calibration,
    calibrate_bf16,
    calibrate_training_precision,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


class FakeSteps:
    """A step function and a clock: a float32 step takes `float32` seconds, a bf16 step `bf16` seconds."""

    def __init__(self, float32: float, bf16: float):
        self.seconds = {False: float32, True: bf16}
        self.now, self.calls = 0.0, []

    def step(self, bf16: bool) -> None:
        self.calls.append(bf16)
        self.now += self.seconds[bf16]

    def timer(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("float32", "bf16", "use_bf16"),
    [
        (2.0, 1.0, True),  # bf16 twice as fast
        (1.0, 2.0, False),  # bf16 slower (an AVX2-like CPU)
        (1.05, 1.0, False),  # faster, but within the margin
        (1.1, 1.0, True),  # exactly the margin
    ],
)
def test_bf16_is_chosen_only_when_faster_by_the_margin(float32, bf16, use_bf16):
    fake = FakeSteps(float32, bf16)
    calibration = calibrate_bf16(fake.step, tokens_per_step=100, rounds=3, timer=fake.timer)
    assert calibration.use_bf16 is use_bf16
    assert calibration.speedup == pytest.approx(float32 / bf16)
    assert (calibration.float32_seconds, calibration.bf16_seconds) == pytest.approx((float32, bf16))
    assert calibration.margin == BF16_SPEEDUP_MARGIN
    # one untimed warm-up step each, then rounds that alternate which precision goes first
    assert fake.calls == [False, True, False, True, True, False, False, True]
    chosen = "bf16 autocast" if use_bf16 else "float32"
    assert calibration.precision == (
        f"{chosen} (chosen by calibration: bf16 {float32 / bf16:.2f}x float32, needs >= 1.10x)"
    )


def test_the_speedup_is_the_median_of_per_round_ratios():
    # Rounds (float32, bf16 seconds): (6, 1) under a load spike, then (1, 1) and (2.1, 2). The ratio of the medians
    # would say 2.1x; the rounds themselves say 6, 1 and 1.05: a median of 1.05, within the margin.
    times = iter([0.0, 0.0, 6.0, 1.0, 1.0, 1.0, 2.1, 2.0])  # warm-ups, then (F, T), (T, F), (F, T)
    clock = {"now": 0.0}

    def step(bf16: bool) -> None:
        clock["now"] += next(times)

    calibration = calibrate_bf16(step, 10, rounds=3, timer=lambda: clock["now"])
    assert calibration.speedup == pytest.approx(1.05) and not calibration.use_bf16
    assert (calibration.float32_seconds, calibration.bf16_seconds) == pytest.approx((2.1, 1.0))


@pytest.mark.parametrize(("name", "kwargs"), [("rounds", {"rounds": 0}), ("margin", {"margin": 0.0})])
def test_bad_calibration_settings_raise(name, kwargs):
    with pytest.raises(ValueError, match=name):
        calibrate_bf16(lambda bf16: None, 10, **kwargs)
    with pytest.raises(ValueError, match="tokens_per_step"):
        calibrate_bf16(lambda bf16: None, 0)


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_auto_calibrates_only_on_a_cpu_with_bf16_units(tmp_path, monkeypatch, fast):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast)
    recipe = os.path.join(REPO, "training", "configs", "shakespeare-char.yaml")
    *_, args, _, calibrate = parse_recipe([recipe, "--output_dir", str(tmp_path)])
    assert calibrate is fast and args.bf16 is False  # float32 until the calibration decides
    for value in ("true", "false"):  # an explicit choice is kept and never calibrated
        *_, args, _, calibrate = parse_recipe([recipe, "--output_dir", str(tmp_path), "--bf16", value])
        assert calibrate is False and args.bf16 is (value == "true")
    with pytest.raises(ValueError, match="bf16"):
        runtime.resolve_bf16("maybe", "cpu")


def test_bf16_auto_on_a_gpu_keeps_the_hardware_rule(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)  # even where the host CPU has bf16 units
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
        argv, calibrate = recipe_module._resolve_auto_bf16(["--bf16", "auto"])
        assert argv == ["--bf16", "true" if supported else "false"] and calibrate is False
    argv, calibrate = recipe_module._resolve_auto_bf16(
        ["--bf16=auto", "--use_cpu", "true"]
    )  # the CPU of a GPU machine
    assert argv == ["--bf16=false", "--use_cpu", "true"] and calibrate is True


@pytest.mark.parametrize(("fast", "speedup"), [(True, 1.5), (True, 1.02), (False, None)])
def test_cli_trains_in_the_calibrated_precision_and_states_it(tmp_path, monkeypatch, fast, speedup):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast)
    seen = []

    def fake_calibration(model, batch, args):
        seen.append(tuple(batch["input_ids"].shape))
        return Bf16Calibration(
            1.0, 1.0 / speedup, speedup, BF16_SPEEDUP_MARGIN, 3, batch["input_ids"].numel()
        )

    monkeypatch.setattr(train_module, "calibrate_training_precision", fake_calibration)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Line {i}: to be, or not to be, that is the question." for i in range(60)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(CLI_RECIPE.format(corpus=corpus) + "bf16: auto\n")
    out = tmp_path / "run"
    report = train_module.train([str(recipe), "--output_dir", str(out), "--sample_count", "0"])
    saved_bf16 = json.loads((out / "training_args.json").read_text())["bf16"]
    card = ModelCard.load(out / "README.md").text
    if not fast:  # no bf16 units: float32, nothing timed
        assert seen == [] and report["precision"] == "float32" and saved_bf16 is False
        assert report["bf16_calibration"] is None
        return
    assert seen == [(4, 32)]  # the first batch: per_device_train_batch_size x block_size
    assert saved_bf16 is (speedup >= BF16_SPEEDUP_MARGIN)
    assert f"chosen by calibration: bf16 {speedup:.2f}x float32" in report["precision"]
    assert report["precision"].startswith("bf16 autocast" if saved_bf16 else "float32")
    assert report["precision"] in card and report["bf16_calibration"]["speedup"] == speedup


def test_a_real_calibration_leaves_the_model_and_the_random_state_unchanged(tmp_path):
    model = tiny_model(randomize_schedule=False, dropout=0.1).eval()
    rows = [{"input_ids": [4 + (s + i) % 16 for i in range(12)]} for s in range(4)]
    batch = DataCollatorForMaskedDiffusion(pad_token_id=1)(rows)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch.manual_seed(5)
    calibration = calibrate_training_precision(model, batch, training_arguments(tmp_path), rounds=2)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # dropout's random numbers were not consumed
    assert calibration.rounds == 2 and calibration.tokens_per_step == 48
    assert calibration.float32_seconds > 0 and calibration.bf16_seconds > 0 and calibration.speedup > 0
    assert not model.training and all(p.grad is None for p in model.parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name
