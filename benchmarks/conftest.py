"""Shared benchmark setup (pytest-benchmark).

Switch: ``--bench-threads N`` sets torch's intra-op threads (also used by the cpp extension's
at::parallel_for) for benchmarks that take the ``bench_threads`` fixture; default: torch's own
default. On a CPU shared with other work, 1 thread gives stable numbers (2 threads thrash when
the second core is busy).
"""
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--bench-threads", type=int, default=None,
                     help="torch.set_num_threads for the benchmarks (default: torch's default)")


@pytest.fixture
def bench_threads(request):
    """The intra-op thread count in force for this benchmark (set from --bench-threads)."""
    threads = request.config.getoption("--bench-threads")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    yield torch.get_num_threads()
    torch.set_num_threads(before)


@pytest.fixture
def measure(benchmark):
    """``measure(fn, expected_seconds)``: time ``fn()`` with rounds fitted to its expected cost.

    About 10 s of rounds in total (1 to 20 rounds), with a warm-up call unless one call is
    expected to take over a second; returns what ``fn`` returned.
    """
    def run(fn, expected_seconds: float):
        rounds = int(min(20, max(1, 10.0 / max(expected_seconds, 1e-3))))
        warmup = 1 if expected_seconds < 1.0 else 0
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
    return run
