"""Fixtures and hooks of the test suite; the shared helpers live in `helpers.py`."""

from __future__ import annotations

import os

# Tiny models gain nothing from a second thread, and oversubscribed OpenMP threads are several times slower on a
# shared 2-core machine; subprocesses started by the tests inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from helpers import tiny_model


@pytest.fixture
def make_model():
    return tiny_model
