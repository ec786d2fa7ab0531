"""Shared pytest setup: hypothesis profiles, chosen by HYPOTHESIS_PROFILE (default: ci).

ci        derandomized, 60 examples per property: the default, fast and repeatable
dev       random, 200 examples: for local work
thorough  random, 3000 examples: run on demand (make test-thorough)
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True)
settings.register_profile(
    "thorough", max_examples=3000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests' networks are tiny; a second torch thread only adds synchronisation, which on a
# shared 2-core machine made the suite several times slower (see refbp.report.DEFAULT_THREADS).
torch.set_num_threads(1)

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU visible to torch on this machine")


def devices() -> list[str]:
    """The devices to run device-parametrised tests on: cpu, and cuda when present."""
    return ["cpu", "cuda"] if CUDA else ["cpu"]
