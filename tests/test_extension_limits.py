"""The compiled extensions' limits have one source (``shapley_kernels._backends.EXTENSION_LIMITS``):
each build exports its own and a build whose limits differ does not load (its backend reports why)."""
import pytest

import shapley_kernels._backends as backends
from shapley_kernels import alignment


def _fresh_load(monkeypatch, name):
    monkeypatch.setattr(backends, "_modules", {})
    monkeypatch.setattr(backends, "_load_errors", {})
    return backends.load_extension(name)


def test_the_python_limits_are_the_ones_stated_once():
    assert alignment.EXACT_LIMIT == backends.EXACT_LIMIT == backends.EXTENSION_LIMITS["_C"]["EXACT_LIMIT"]
    from shapley_kernels.alignment import _cuda_backend

    assert _cuda_backend.SAMPLING_LIMIT == backends.EXTENSION_LIMITS["_cuda"]["SAMPLING_LIMIT"]


def test_the_cpp_build_exports_its_limits(monkeypatch):
    ext = _fresh_load(monkeypatch, "_C")
    if ext is None:
        pytest.skip(f"the C++ extension is not built: {backends._load_errors.get('_C')}")
    assert ext.EXACT_LIMIT == backends.EXACT_LIMIT


def test_a_build_with_other_limits_does_not_load(monkeypatch):
    if _fresh_load(monkeypatch, "_C") is None:
        pytest.skip("the C++ extension is not built")
    monkeypatch.setitem(backends.EXTENSION_LIMITS, "_C", {"EXACT_LIMIT": backends.EXACT_LIMIT + 1})
    assert _fresh_load(monkeypatch, "_C") is None
    reason = backends.backend_status()["cpp"]
    assert "EXACT_LIMIT" in reason and str(backends.EXACT_LIMIT + 1) in reason and "rebuild" in reason
    assert "cpp" not in backends.available_backends()
