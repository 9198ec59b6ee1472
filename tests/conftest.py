"""Fixtures and hooks of the test suite; the shared helpers live in `helpers.py`."""

from __future__ import annotations

import os

# Tiny models gain nothing from a second thread, and oversubscribed OpenMP threads are several times slower on a
# shared 2-core machine; subprocesses started by the tests inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from helpers import tiny_model


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def one_thread():
    """Tiny matrices: one intra-op thread avoids OpenMP spin-waits that make tests crawl on a shared CPU (and
    undoes a test that changes the thread count, e.g. `lomdm-train`'s `configure_threads`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
