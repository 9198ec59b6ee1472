"""Properties of the block KV cache of `model.generate` (`cache_implementation`, `cache_lomdm.py`)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import MASK_ID
from test_generation import EOS_ID, PAD_ID, RecordingStreamer, generators
from transformers import LogitsProcessor, LogitsProcessorList

from hf_lomdm import LoMDMGenerationConfig
from hf_lomdm.cache_lomdm import LoMDMBlockCache, cache_window

IMPLEMENTATIONS = ["prefix", "dual"]
# (order, steps, extra settings): every reveal rule, the exact sampler, the τ-grid and threshold decoding.
ORDERS = [
    ("learned", None, {}),
    ("learned", 6, {}),
    ("random", 6, {}),
    ("confidence", None, {}),
    ("confidence", None, {"threshold": 0.05}),
    ("margin", 6, {}),
    ("entropy", None, {}),
    ("left_to_right", 6, {}),
    ("learned_ranked", None, {}),
    ("learned_ranked", 6, {"order_temperature": 1.0}),
    ("margin_learned", 6, {"order_weight": 0.5}),
    ("confidence_learned", None, {}),
]
ORDER_IDS = [f"{order}-{steps}-{'-'.join(extra) or 'plain'}" for order, steps, extra in ORDERS]


# Tiny models run much faster on one thread when the CPU is shared (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def one_layer_model(make_model, **overrides):
    """One layer: a column's layer-0 keys / values depend on its own token and position only, so the cached ones
    are exactly those of a fresh pass. `per_position`: ê reads no features, so it is exact too."""
    return make_model(schedule="per_position", num_hidden_layers=1, **overrides)


def generate_both(model, prompt, implementation, **settings):
    """The same call without and with the block cache (fresh per-row generators for each)."""
    attention_mask = (prompt != PAD_ID).long()
    outputs = []
    for cache_implementation in (None, implementation):
        outputs.append(
            model.generate(
                prompt,
                attention_mask=attention_mask,
                cache_implementation=cache_implementation,
                return_dict_in_generate=True,
                output_order=True,
                generator=generators(
                    *range(10, 10 + prompt.shape[0] * settings.get("num_return_sequences", 1))
                ),
                **settings,
            )
        )
    return outputs


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(("order", "steps", "extra"), ORDERS, ids=ORDER_IDS)
def test_cache_equals_uncached_when_cached_keys_equal_a_fresh_pass(
    make_model, implementation, order, steps, extra
):
    # Left-padded batch, three blocks: every later pass of a block reuses the cached columns.
    model = one_layer_model(make_model)
    prompt = torch.tensor([[PAD_ID, PAD_ID, 2, 5], [2, 7, 8, 9]])
    uncached, cached = generate_both(
        model,
        prompt,
        implementation,
        max_new_tokens=12,
        block_length=4,
        steps=steps,
        order=order,
        eos_token_id=[],
        **extra,
    )
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.reveal_pass, uncached.reveal_pass)
    assert torch.equal(cached.nfe, uncached.nfe)
    assert bool((cached.computed_positions < uncached.computed_positions).all())
    assert torch.equal(uncached.computed_positions, uncached.nfe * 16)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cache_is_exact_for_a_shifted_head(make_model, implementation):
    # With `shift` the first position of a block reads the features of the column before it: it must be recomputed.
    model = one_layer_model(make_model, shift=True)
    uncached, cached = generate_both(
        model,
        torch.tensor([[2, 5, 6]]),
        implementation,
        max_new_tokens=9,
        block_length=3,
        order="confidence",
        eos_token_id=[],
    )
    assert torch.equal(cached.sequences, uncached.sequences)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cache_computes_only_the_window_after_the_first_pass_of_a_block(make_model, implementation):
    # Prompt 4, 12 new tokens in blocks of 4, one token per pass: 4 passes per block on the L = 16 canvas.
    # prefix: each block costs 16 + 3 * (16 - start), start = 4 / 8 / 12 -> 52 + 40 + 28 = 120 positions.
    # dual:   each block costs 16 + 3 * 4 = 28 -> 84 positions.
    model = one_layer_model(make_model)
    out = model.generate(
        torch.tensor([[2, 5, 6, 7]]),
        max_new_tokens=12,
        block_length=4,
        order="left_to_right",
        cache_implementation=implementation,
        eos_token_id=[],
        return_dict_in_generate=True,
    )
    assert out.nfe.item() == 12
    assert out.computed_positions.item() == {"prefix": 120, "dual": 84}[implementation]


def test_window_covers_the_block_and_for_prefix_the_suffix():
    assert cache_window("prefix", (4, 8), 16, shift=False) == (4, 16)
    assert cache_window("dual", (4, 8), 16, shift=False) == (4, 8)
    assert cache_window("dual", (4, 8), 16, shift=True) == (3, 8)
    assert cache_window("dual", (0, 4), 16, shift=True) == (0, 4)


def test_cached_keys_put_the_window_back_in_column_order():
    # Cached columns 0-1 and 4-5 around a window 2-4: a cached pass attends to [0, 1, fresh 2, fresh 3, 4, 5].
    full = torch.arange(6.0).view(1, 1, 6, 1).expand(2, 1, 6, 1)  # (B, kv_heads, L, D): value = column
    cache = LoMDMBlockCache((2, 4), rows=torch.tensor([0, 1]))
    keys, values = cache.update(full, full, 0)
    assert keys is full and values is full  # the first pass attends to its own keys
    cache.features = torch.zeros(2, 6, 1)
    cache.select(torch.tensor([1]))
    fresh = torch.tensor([[-2.0, -3.0]]).view(1, 1, 2, 1)
    keys, _ = cache.update(fresh, fresh, 0)
    assert keys.flatten().tolist() == [0.0, 1.0, -2.0, -3.0, 4.0, 5.0]
    assert cache.get_seq_length() == 4  # nothing of the cached pass was stored


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cache_survives_eos_stop_streamers_return_sequences_and_allowed_tokens(make_model, implementation):
    class EosInSecondBlock(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            # Row 0 must end with EOS once its first block is written (canvas column 5 known).
            stop = (input_ids[:, 5] != MASK_ID)[:, None]
            forced = torch.full_like(scores, -math.inf).index_fill(-1, torch.tensor([EOS_ID]), 0.0)
            return torch.where(stop, forced, scores)

    model = one_layer_model(make_model)
    prompt = torch.tensor([[PAD_ID, 2, 5], [2, 6, 7]])
    settings = dict(max_new_tokens=9, block_length=3, order="confidence", num_return_sequences=2)
    uncached, cached = generate_both(
        model, prompt, implementation, logits_processor=LogitsProcessorList([EosInSecondBlock()]), **settings
    )
    assert torch.equal(cached.sequences, uncached.sequences)
    assert bool((cached.sequences[:, -1] == PAD_ID).all())  # every row stopped after its second block

    allowed = torch.ones(2 * 2, 12, 99, dtype=torch.bool)
    allowed[:, 3:, 50:] = False  # new tokens from ids below 50 only
    uncached, cached = generate_both(
        model, prompt, implementation, allowed_tokens=allowed, eos_token_id=[], **settings
    )
    assert torch.equal(cached.sequences, uncached.sequences) and bool((cached.sequences[:, 3:] < 50).all())

    streamed = []
    for cache_implementation in (None, implementation):
        streamer = RecordingStreamer()
        model.generate(
            torch.tensor([[2, 5]]),
            max_new_tokens=6,
            block_length=2,
            streamer=streamer,
            eos_token_id=None,
            cache_implementation=cache_implementation,
            generator=generators(3),
        )
        streamed.append(streamer.puts)
    assert streamed[0] == streamed[1] and len(streamed[1]) > 1


def test_each_block_starts_with_a_whole_canvas_pass_then_computes_only_its_block(make_model):
    # Two layers, `dual`: the first pass of a block is the uncached pass (same log-probs); the next one runs the
    # head at the block's masked positions only (the uncached pass also covers the later block's masks).
    model = make_model(schedule="lomdm")
    seen = {}
    for cache_implementation in (None, "dual"):
        passes = []
        hook = model.lm_head.register_forward_hook(lambda module, args, output: passes.append(output))
        model.generate(
            torch.tensor([[2, 5]]),
            max_new_tokens=8,
            block_length=4,
            steps=4,
            order="learned_ranked",
            eos_token_id=[],
            cache_implementation=cache_implementation,
            generator=generators(0),
        )
        hook.remove()
        seen[cache_implementation] = passes
    assert len(seen["dual"]) == len(seen[None]) == 4  # 2 steps per block, one pass each
    torch.testing.assert_close(seen["dual"][0], seen[None][0])  # 8 masked positions, whole canvas
    assert seen["dual"][1].shape[0] == 2 and seen[None][1].shape[0] == 6  # 2 left in the block, 4 after it


def test_use_cache_false_turns_the_block_cache_off(make_model):
    out = make_model().generate(
        torch.tensor([[2, 5]]),
        max_new_tokens=8,
        block_length=4,
        cache_implementation="prefix",
        use_cache=False,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.computed_positions, out.nfe * 10)


def test_time_conditioned_model_generates_with_cache(make_model):
    out = make_model(time_conditioning=True).generate(
        torch.tensor([[2, 5]]),
        max_new_tokens=8,
        block_length=4,
        steps=4,
        cache_implementation="dual",
        return_dict_in_generate=True,
        generator=generators(0),
    )
    assert not bool((out.sequences == MASK_ID).any()) and out.computed_positions.item() < out.nfe.item() * 10


def test_bad_cache_settings_raise():
    with pytest.raises(ValueError, match=r"`cache_implementation='prefix'`.*needs `block_length`"):
        LoMDMGenerationConfig(cache_implementation="prefix")
    with pytest.raises(
        ValueError, match=r"`cache_implementation` must be one of \('prefix', 'dual'\).*'static'"
    ):
        LoMDMGenerationConfig(cache_implementation="static", block_length=4)


def test_cache_setting_round_trips_through_generation_config(make_model, tmp_path):
    model = make_model()
    model.generation_config.update(block_length=4, cache_implementation="dual")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "cache_lomdm.py").is_file()  # the remote code travels with the checkpoint
    assert LoMDMGenerationConfig.from_pretrained(tmp_path).cache_implementation == "dual"


def test_readme_cache_snippet_runs(make_model):
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (snippet,) = [
        block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "cache_implementation" in block
    ]
    scope = {"model": make_model(), "prompt": torch.tensor([[2]])}
    exec(snippet, scope)
    out = scope["out"]
    assert out.sequences.shape == (1, 49) and out.computed_positions.item() < out.nfe.item() * 49
