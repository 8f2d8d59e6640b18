"""Shared test settings: a deterministic Hypothesis profile, and single-threaded torch for the
loss tests (their tensors are tiny; intra-op threads only add contention on a busy CI runner)."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Deterministic in CI: the same examples on every run, no example database, no per-example
# deadline (the first call into torch is slow). max_examples is set per test in the fuzz file.
settings.register_profile(
    "kdlearn",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("kdlearn")


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's tests with one torch thread, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Kernel tests run the Triton kernels through the interpreter when there is no GPU. triton.jit
# reads this when a kernel module is first imported, so it is set before any test runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
