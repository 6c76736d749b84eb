"""Shared test setup: Triton's interpreter on machines without CUDA, and per-test seeds.

``TRITON_INTERPRET=1`` must be set before anything imports triton, so it is set here, at
collection time, whenever no CUDA device is available (an explicit setting is kept).
"""
import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def rng_seed():
    """A fresh random seed for this test, printed so that a failure can be reproduced."""
    seed = random.SystemRandom().randrange(2 ** 31)
    print(f"rng_seed = {seed}")
    return seed
