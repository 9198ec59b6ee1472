"""Tiny-config factories shared by the test suite (LlamaModelTester-sized: CPU seconds)."""

from __future__ import annotations

import os

# Tiny models gain nothing from a second thread, and oversubscribed OpenMP threads are several times slower on a
# shared 2-core machine; subprocesses started by the tests inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from hf_lomdm import LoMDMConfig, LoMDMForMaskedDiffusion

MASK_ID = 0


def tiny_config(**overrides) -> LoMDMConfig:
    kwargs = dict(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, mask_token_id=MASK_ID, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        schedule="lomdm", scheduler_intermediate_size=32, scheduler_head_size=16,
    )
    kwargs.update(overrides)
    return LoMDMConfig(**kwargs)


def tiny_model(seed: int = 0, randomize_schedule: bool = True, **overrides) -> LoMDMForMaskedDiffusion:
    """A tiny model in eval mode. With `randomize_schedule`, the scheduler heads / position scores get
    non-zero weights (they start at zero, i.e. at the polynomial schedule) so the exponents vary."""
    torch.manual_seed(seed)
    model = LoMDMForMaskedDiffusion(tiny_config(**overrides)).eval()
    if randomize_schedule:
        with torch.no_grad():
            for scheduler in (model.forward_scheduler, model.reverse_scheduler):
                if scheduler is not None:
                    scheduler.score_proj.weight.normal_(0.0, 2.0)
                    scheduler.score_proj.bias.normal_(0.0, 1.0)
            if model.position_scores is not None:
                model.position_scores.weight.normal_(0.0, 2.0)
    return model


@pytest.fixture
def make_model():
    return tiny_model
