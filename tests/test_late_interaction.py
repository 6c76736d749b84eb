"""shapley_kernels.late_interaction against a reference written from the definition (float64
einsum over every (caption, image, query, patch), the max taken with ``torch.max``, whose gradient
goes to the first maximal index: the op's documented tie rule), on every CPU backend: values,
argmax and gradients on random inputs, exact ties, padded queries, captions without a query,
Bt != Bi, float32 / float64, chunking; the boundary checks; the torch.library ops."""
import pytest
import torch
import torch.nn.functional as F

import shapley_kernels as sk
from shapley_kernels._backends import load_extension
from shapley_kernels.late_interaction import _torch_backend

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(load_extension("_C") is None,
                                                                 reason="the C++ extension is not built")),
            pytest.param("triton", marks=[pytest.mark.triton, pytest.mark.skipif(
                "triton" not in sk.available_backends(), reason="triton needs a CUDA device or TRITON_INTERPRET=1")])]


def _reference(queries, query_mask, patches):
    """(similarity float64[Bt, Bi], best float64[Bt, Bi, Q], argmax long[Bt, Bi, Q]) straight from the
    definition: best = max over patches of the dot product, similarity = mean over present queries."""
    cos = torch.einsum("tqd,ipd->tiqp", queries.double(), patches.double())
    best, argmax = cos.max(dim=3)
    weight = query_mask.double()
    similarity = (best * weight[:, None, :]).sum(2) / weight.sum(1, keepdim=True).clamp(min=1.0)
    return similarity, best, argmax


def _inputs(Bt=5, Bi=3, Q=4, P=7, d=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    queries = F.normalize(torch.randn(Bt, Q, d, generator=g, dtype=dtype), dim=-1)
    patches = F.normalize(torch.randn(Bi, P, d, generator=g, dtype=dtype), dim=-1)
    query_mask = torch.rand(Bt, Q, generator=g) < 0.7
    query_mask[0] = True
    query_mask[1] = False                         # a caption without a query
    return queries, query_mask, patches


def _values_and_grads(fn, queries, query_mask, patches, seed=1):
    q = queries.clone().requires_grad_(True)
    p = patches.clone().requires_grad_(True)
    out = fn(q, query_mask, p)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * upstream).sum().backward()
    return out.detach(), q.grad, p.grad


def _assert_close_relative(got, want, tol):
    scale = float(want.double().norm()) or 1.0
    assert float((got.double() - want.double()).norm()) <= tol * scale, (got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", [dict(Bt=5, Bi=3, Q=4, P=7, d=6), dict(Bt=2, Bi=6, Q=1, P=70, d=3),
                                   dict(Bt=3, Bi=3, Q=9, P=1, d=130)])
def test_values_and_gradients_match_the_reference(backend, dtype, tol, shape):
    queries, query_mask, patches = _inputs(dtype=dtype, **shape)
    got = _values_and_grads(lambda q, m, p: sk.late_interaction(q, m, p, backend=backend), queries, query_mask, patches)
    want = _values_and_grads(lambda q, m, p: _reference(q, m, p)[0], queries, query_mask, patches)
    assert got[0].dtype == dtype and got[0].shape == (shape["Bt"], shape["Bi"])
    for a, b in zip(got, want):
        _assert_close_relative(a, b, tol)
    assert float(got[0][1].abs().max()) == 0.0 and float(got[1][1].abs().max()) == 0.0   # no query: 0, no grad
    best, argmax = sk.late_interaction_max(queries, query_mask, patches, backend=backend)
    _, want_best, want_arg = _reference(queries, query_mask, patches)
    present = query_mask[:, None, :].expand_as(argmax)
    _assert_close_relative(best, want_best.masked_fill(~present, 0.0), tol)
    assert torch.equal(argmax[present], want_arg[present]) and bool((argmax[~present] == -1).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lowest_patch_index(backend):
    """Entries in {-1, -1/2, 0, 1/2, 1}: every dot product is exact, so duplicated patches tie exactly."""
    g = torch.Generator().manual_seed(4)
    queries = torch.randint(-2, 3, (4, 3, 5), generator=g).double() / 2
    patches = torch.randint(-2, 3, (3, 6, 5), generator=g).double() / 2
    patches[:, 4] = patches[:, 1]                 # patch 4 ties patch 1 in every image
    patches[2] = 0.0                              # image 2: every patch ties at 0
    query_mask = torch.ones(4, 3, dtype=torch.bool)
    query_mask[3, 1:] = False
    _, want_best, want_arg = _reference(queries, query_mask, patches)
    best, argmax = sk.late_interaction_max(queries, query_mask, patches, backend=backend)
    assert torch.equal(argmax[query_mask[:, None, :].expand_as(argmax)],
                       want_arg[query_mask[:, None, :].expand_as(argmax)])
    assert bool((argmax[:, 2][query_mask] == 0).all()) and not bool((argmax == 4).any())
    got = _values_and_grads(lambda q, m, p: sk.late_interaction(q, m, p, backend=backend), queries, query_mask, patches)
    want = _values_and_grads(lambda q, m, p: _reference(q, m, p)[0], queries, query_mask, patches)
    for a, b in zip(got, want):
        _assert_close_relative(a, b, 1e-12)
    assert float(got[2][:, 4].abs().max()) == 0.0   # the higher tied patch gets no gradient


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_queries_may_hold_nan_and_mixed_dtypes_promote(backend):
    queries, query_mask, patches = _inputs()
    dirty = queries.clone()
    dirty[~query_mask] = float("nan")
    got = sk.late_interaction(dirty, query_mask, patches.float(), backend=backend)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _reference(queries, query_mask, patches.float().double())[0])
    all_present = sk.late_interaction(queries, None, patches, backend=backend)
    torch.testing.assert_close(all_present, _reference(queries, torch.ones_like(query_mask), patches)[0])


def test_chunked_torch_path_equals_one_chunk(monkeypatch):
    queries, query_mask, patches = _inputs(Bt=7, Bi=4)
    whole = _values_and_grads(lambda q, m, p: sk.late_interaction(q, m, p, backend="torch"), queries, query_mask, patches)
    monkeypatch.setattr(_torch_backend, "_CHUNK_ELEMENTS", 1)      # one caption per chunk
    chunked = _values_and_grads(lambda q, m, p: sk.late_interaction(q, m, p, backend="torch"), queries, query_mask, patches)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batches_give_empty_results(backend):
    queries, query_mask, patches = _inputs()
    assert sk.late_interaction(queries[:0], query_mask[:0], patches, backend=backend).shape == (0, 3)
    best, argmax = sk.late_interaction_max(queries, query_mask, patches[:0], backend=backend)
    assert best.shape == argmax.shape == (5, 0, 4)


def test_bad_inputs_raise_naming_the_argument():
    queries, query_mask, patches = _inputs()
    with pytest.raises(ValueError, match="patches must have the queries' embedding size"):
        sk.late_interaction(queries, query_mask, patches[..., :-1])
    with pytest.raises(TypeError, match="queries must be a floating-point"):
        sk.late_interaction(queries.long(), query_mask, patches)
    with pytest.raises(TypeError, match="query_mask must be a bool"):
        sk.late_interaction(queries, query_mask.long(), patches)
    with pytest.raises(ValueError, match="query_mask must have shape"):
        sk.late_interaction(queries, query_mask[:, :2], patches)
    with pytest.raises(ValueError, match="queries must have 3 dimensions"):
        sk.late_interaction(queries[0], query_mask, patches)
    bad = patches.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="patches contains NaN"):
        sk.late_interaction(queries, query_mask, bad)
    bad = queries.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="queries contains inf"):
        sk.late_interaction(bad, query_mask, patches)
    with pytest.raises(ValueError, match="patches must be float\\[Bi, P, d\\] with P >= 1"):
        sk.late_interaction(queries, query_mask, patches[:, :0])
    with pytest.raises(ValueError, match="queries must be float\\[Bt, Q, d\\] with Q >= 1"):
        sk.late_interaction_max(queries[:, :0], query_mask[:, :0], patches)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        sk.late_interaction(queries, query_mask, patches, backend="fortran")


@pytest.mark.skipif(load_extension("_C") is None, reason="the C++ extension is not built")
def test_cpu_ops_pass_opcheck():
    from shapley_kernels.late_interaction import _cpp_backend  # noqa: F401  (defines the ops, registers their CPU kernels)

    queries, query_mask, patches = _inputs()
    similarity, argmax = torch.ops.shapley_kernels.late_interaction_forward(queries, query_mask, patches)
    grad = torch.randn(similarity.shape, dtype=similarity.dtype)
    for name, args in (("late_interaction_forward", (queries, query_mask, patches)),
                       ("late_interaction_best", (queries, query_mask, patches)),
                       ("late_interaction_backward", (grad, queries, query_mask, patches, argmax))):
        torch.library.opcheck(getattr(torch.ops.shapley_kernels, name).default, args,
                              test_utils=("test_schema", "test_faketensor"))


@pytest.fixture(scope="module")
def emulated_cuda(tmp_path_factory):
    """The CUDA backend's kernel functions with csrc/late_interaction_cuda.cu run on the host."""
    from _cuda_host_emulation import compiler_missing
    from _late_interaction_cuda_emulation import build
    from shapley_kernels.late_interaction import _cuda_backend

    if compiler_missing():
        pytest.skip(compiler_missing())
    ext = build(tmp_path_factory.mktemp("late_interaction_emulation"))
    patch = pytest.MonkeyPatch()
    patch.setattr(_cuda_backend, "_ext", lambda: ext)
    yield _cuda_backend.kernels
    patch.undo()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_emulated_cuda_kernels_match_the_reference(emulated_cuda, dtype, tol):
    from shapley_kernels.late_interaction import _LateInteraction, _prepare

    def emulated(q, m, p):
        return _LateInteraction.apply(*_prepare(q, m, p), emulated_cuda)

    for shape in (dict(Bt=5, Bi=3, Q=4, P=7, d=6), dict(Bt=2, Bi=6, Q=1, P=70, d=3)):
        queries, query_mask, patches = _inputs(dtype=dtype, **shape)
        got = _values_and_grads(emulated, queries, query_mask, patches)
        want = _values_and_grads(lambda q, m, p: _reference(q, m, p)[0], queries, query_mask, patches)
        for a, b in zip(got, want):
            _assert_close_relative(a, b, tol)
        best, argmax = emulated_cuda.best(*_prepare(queries, query_mask, patches))
        _, want_best, want_arg = _reference(queries, query_mask, patches)
        present = query_mask[:, None, :].expand_as(argmax)
        _assert_close_relative(best, want_best.masked_fill(~present, 0.0), tol)
        assert torch.equal(argmax[present].long(), want_arg[present]) and bool((argmax[~present] == -1).all())


def test_emulated_cuda_ties_go_to_the_lowest_patch_index(emulated_cuda):
    from shapley_kernels.late_interaction import _prepare

    queries = torch.ones(2, 2, 3, dtype=torch.float64)
    patches = torch.zeros(3, 5, 3, dtype=torch.float64)
    patches[0, 2] = patches[0, 4] = 1.0          # image 0: patches 2 and 4 tie; image 1, 2: all tie at 0
    _, argmax = emulated_cuda.best(*_prepare(queries, None, patches))
    assert argmax[:, 0].unique().tolist() == [2] and argmax[:, 1:].unique().tolist() == [0]


def test_the_cpu_and_cuda_backends_implement_the_same_three_ops():
    from shapley_kernels.late_interaction import _cpp_backend, _cuda_backend

    for name in ("late_interaction_forward", "late_interaction_best", "late_interaction_backward"):
        for key in ("CPU", "CUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"shapley_kernels::{name}", key), (name, key)
    assert _cpp_backend.kernels._fields == _cuda_backend.kernels._fields == ("forward", "best", "backward")
