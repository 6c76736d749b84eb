"""Checks of an alignment-game backend against references written straight from the spec.

Shared by tests/test_alignment_triton.py and tests/test_alignment_cuda.py (same checks, other
backend and device). References, independent of ``shapley_kernels``:

- ``spec_v2``: v2(S) of spec section 4 in plain Python float64, per coalition;
- ``brute_interactions``: tests/reference.py ``brute_sii`` (Eq. 9-10 by enumeration) over
  ``spec_v2`` restricted to each matrix's present players;
- ``philox4x32``: Philox4x32-10 from the Random123 paper, checked on its published vectors.
"""
import math

import torch

import shapley_kernels as sk
from reference import brute_sii

_MASK32 = 0xFFFFFFFF

# Random123 known-answer vectors for philox4x32-10: (key, counter, output).
PHILOX_KAT = [
    ((0, 0), (0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((_MASK32, _MASK32), (_MASK32,) * 4, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0xA4093822, 0x299F31D0), (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox4x32(key, counter):
    """Philox4x32-10 of key (k0, k1) and counter (c0, c1, c2, c3): the 4 output words (ints)."""
    k0, k1 = key
    x0, x1, x2, x3 = counter
    for _ in range(10):
        p0 = 0xD2511F53 * x0
        p1 = 0xCD9E8D57 * x2
        x0, x1, x2, x3 = ((p1 >> 32) ^ x1 ^ k0) & _MASK32, p1 & _MASK32, ((p0 >> 32) ^ x3 ^ k1) & _MASK32, p0 & _MASK32
        k0 = (k0 + 0x9E3779B9) & _MASK32
        k1 = (k1 + 0xBB67AE85) & _MASK32
    return x0, x1, x2, x3


def spec_v2(a, regions, phrases):
    """v2(S) of spec section 4: a list[list[float]] logits, regions / phrases the present indices.

    max_j exp(a_ij) / sum_j' exp(a_ij') is written 1 / sum_j' exp(a_ij' - max_j a_ij) (same value,
    no overflow at logits of 1e4).
    """
    if not regions or not phrases:
        return 0.0
    s1 = sum(1.0 / sum(math.exp(a[i][j] - max(a[i][k] for k in phrases)) for j in phrases)
             for i in regions) / len(regions)
    s2 = sum(1.0 / sum(math.exp(a[i][j] - max(a[k][j] for k in regions)) for i in regions)
             for j in phrases) / len(phrases)
    return (s1 + s2) / 2


def spec_game_values(A, coalitions, region_mask, phrase_mask):
    """spec_v2 of every coalition: float64[B, C] (A float[B, K, M], coalitions bool[B, C, K+M])."""
    B, K, M = A.shape
    out = torch.zeros(B, coalitions.shape[1], dtype=torch.float64)
    for b in range(B):
        a = A[b].double().tolist()
        for c, row in enumerate(coalitions[b].tolist()):
            regions = [i for i in range(K) if row[i] and bool(region_mask[b, i])]
            phrases = [j for j in range(M) if row[K + j] and bool(phrase_mask[b, j])]
            out[b, c] = spec_v2(a, regions, phrases)
    return out


def brute_interactions(A, region_mask, phrase_mask):
    """Spec Eq. 10 for every (region, phrase) by enumeration over spec_v2: float64[B, K, M]."""
    B, K, M = A.shape
    out = torch.zeros(B, K, M, dtype=torch.float64)
    for b in range(B):
        a = A[b].double().tolist()
        regions = [i for i in range(K) if bool(region_mask[b, i])]
        phrases = [j for j in range(M) if bool(phrase_mask[b, j])]
        k = len(regions)
        memo = {}

        def value(s):
            if s not in memo:
                memo[s] = spec_v2(a, [regions[x] for x in s if x < k], [phrases[x - k] for x in s if x >= k])
            return memo[s]

        for x, i in enumerate(regions):
            for y, j in enumerate(phrases):
                out[b, i, j] = brute_sii(value, k + len(phrases), x, k + y)
    return out


def exact_case(name, dtype, generator):
    """(A float[B, K, M], region_mask, phrase_mask) of a named edge case, on the CPU."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    if name == "padded":       # padding in matrix 0, a full matrix 1
        A = 3 * randn(2, 3, 4)
        rm = torch.tensor([[True, False, True], [True, True, True]])
        pm = torch.tensor([[True, True, False, True], [True, True, True, True]])
    elif name == "one_region":   # K = 1
        A, rm, pm = 2 * randn(1, 1, 4), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    elif name == "one_phrase":   # M = 1
        A, rm, pm = 2 * randn(1, 4, 1), torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)
    elif name == "single_present":  # one present region and phrase; a matrix with no phrase at all
        A = randn(2, 3, 2)
        rm = torch.tensor([[False, True, False], [True, True, True]])
        pm = torch.tensor([[False, True], [False, False]])
    elif name == "ties":         # all-equal logits; duplicated columns and rows
        A = torch.zeros(2, 3, 3, dtype=torch.float64)
        A[0] = 0.7
        A[1] = randn(3, 1).expand(3, 3).clone()
        A[1, 2] = A[1, 0]
        rm, pm = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
    elif name == "huge":         # logits of +-1e4 (naive exp overflows)
        A = 1e4 * torch.sign(randn(1, 3, 3)) + randn(1, 3, 3)
        rm, pm = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    else:
        raise ValueError(f"unknown case {name!r}")
    return A.to(dtype), rm, pm


EXACT_CASES = ("padded", "one_region", "one_phrase", "single_present", "ties", "huge")


def tolerance(dtype):
    return 1e-10 if dtype == torch.float64 else 2e-5


class PublicAPI:
    """A backend reached through the public API, with the 3 functions of docs/CONTRACTS.md section 1.

    Inputs are CPU tensors (moved to ``device``); results come back to the CPU after checking that
    they were produced on ``device``. The checks below also take a backend module itself.
    """

    def __init__(self, backend, device):
        self.backend, self.device = backend, torch.device(device)

    def _back(self, t):
        assert t.device.type == self.device.type
        return t.cpu()

    def game(self, A, coalitions, region_mask, phrase_mask):
        d = self.device
        return self._back(sk.alignment_game(A.to(d), coalitions.to(d), region_mask.to(d), phrase_mask.to(d),
                                            backend=self.backend))

    def exact(self, A, region_mask, phrase_mask):
        d = self.device
        return self._back(sk.region_phrase_interaction(A.to(d), region_mask.to(d), phrase_mask.to(d),
                                                       method="exact", backend=self.backend))

    def sampling(self, A, region_mask, phrase_mask, num_samples, seed):
        d = self.device
        est = sk.region_phrase_interaction(A.to(d), region_mask.to(d), phrase_mask.to(d), method="sampling",
                                           num_samples=num_samples, seed=seed, backend=self.backend,
                                           return_stderr=True)
        return self._back(est.value), self._back(est.stderr)


def check_game(impl, dtype, generator):
    """impl.game == spec_v2 per coalition, with padding, empty / full coalitions, huge logits."""
    B, K, M = 2, 3, 4
    A = torch.randn(B, K, M, generator=generator, dtype=torch.float64)
    A[1] = 1e4 * A[1].sign() + A[1]
    A = A.to(dtype)
    rm = torch.tensor([[True, True, False], [True, True, True]])
    pm = torch.tensor([[True, False, True, True], [True, True, True, True]])
    coal = torch.rand(B, 12, K + M, generator=generator) < 0.6
    coal[:, 0] = False                     # empty
    coal[:, 1] = True                      # everyone (padding must still be absent)
    coal[:, 2, K:] = False                 # regions only
    coal[:, 3] = False
    coal[:, 3, [0, K + 1]] = True          # region 0 and a padded phrase (matrix 0): no present phrase
    got = impl.game(A, coal, rm, pm)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), spec_game_values(A, coal, rm, pm), rtol=0, atol=tolerance(dtype))


def check_exact(impl, case, dtype, generator):
    """impl.exact == brute-force enumeration of spec Eq. 10 over spec_v2."""
    A, rm, pm = exact_case(case, dtype, generator)
    got = impl.exact(A, rm, pm)
    assert got.dtype == dtype and got.shape == A.shape
    torch.testing.assert_close(got.double(), brute_interactions(A, rm, pm), rtol=0, atol=tolerance(dtype))


def check_sampling(impl, seed, generator, num_samples=512):
    """Sampled SII within 5 standard errors of the exact value; same seed, same result; 0 at padding."""
    A = (2 * torch.randn(1, 2, 3, generator=generator, dtype=torch.float64)).float()
    rm = torch.tensor([[True, True]])
    pm = torch.tensor([[True, False, True]])
    value, stderr = impl.sampling(A, rm, pm, num_samples, seed)
    want = brute_interactions(A, rm, pm)
    value, stderr = value.double(), stderr.double()
    present = rm[:, :, None] & pm[:, None, :]
    assert bool((stderr[present] > 0).all())
    assert bool(((value - want).abs()[present] <= 5 * stderr[present]).all()), (value, want, stderr)
    assert bool((value[~present] == 0).all()) and bool((stderr[~present] == 0).all())
    again, _ = impl.sampling(A, rm, pm, num_samples, seed)
    assert torch.equal(again.double(), value)
    other, _ = impl.sampling(A, rm, pm, num_samples, seed + 1)
    assert not torch.equal(other.double(), value)


def _uniform01(word):
    return (word >> 8) * 2.0 ** -24


def replayed_sampling(A, region_mask, phrase_mask, num_samples, seed):
    """The device samplers' documented draws replayed in Python: (value, stderr) float64[B, K, M].

    Rule (shapley_kernels/alignment/_triton_kernels.py, csrc/alignment_cuda.cu): players compacted
    (present first, original order), R / C the largest present counts, pair p = (b R + i) C + j in
    compact indices, key = (seed mod 2^32, seed // 2^32 mod 2^32), W(s, t) = Philox4x32-10(key,
    (s, p, t, 0)); q = u(W(s, 0)[2]); region t kept iff u(W(s, t)[0]) < q, phrase t iff
    u(W(s, t)[1]) < q (the pair's own players excluded); u(w) = (w >> 8) 2^-24. Each sample adds
    v2(T+ij) - v2(T+i) - v2(T+j) + v2(T), evaluated with spec_v2.
    """
    B, K, M = A.shape
    seed &= (1 << 64) - 1
    key = (seed & 0xFFFFFFFF, seed >> 32)
    regions = [[i for i in range(K) if bool(region_mask[b, i])] for b in range(B)]
    phrases = [[j for j in range(M) if bool(phrase_mask[b, j])] for b in range(B)]
    R = max(len(r) for r in regions)
    C = max(len(p) for p in phrases)
    value = torch.zeros(B, K, M, dtype=torch.float64)
    stderr = torch.zeros(B, K, M, dtype=torch.float64)
    for b in range(B):
        a = A[b].double().tolist()
        rs, ps = regions[b], phrases[b]
        for x in range(len(rs)):
            for y in range(len(ps)):
                p = (b * R + x) * C + y
                deltas = []
                for s in range(num_samples):
                    words = [philox4x32(key, (s, p, t, 0)) for t in range(max(len(rs), len(ps)))]
                    q = _uniform01(words[0][2])
                    tr = [rs[t] for t in range(len(rs)) if t != x and _uniform01(words[t][0]) < q]
                    tp = [ps[t] for t in range(len(ps)) if t != y and _uniform01(words[t][1]) < q]
                    deltas.append(spec_v2(a, tr + [rs[x]], tp + [ps[y]]) - spec_v2(a, tr + [rs[x]], tp)
                                  - spec_v2(a, tr, tp + [ps[y]]) + spec_v2(a, tr, tp))
                d = torch.tensor(deltas, dtype=torch.float64)
                value[b, rs[x], ps[y]] = d.mean()
                stderr[b, rs[x], ps[y]] = d.std() / num_samples ** 0.5 if num_samples > 1 else 0.0
    return value, stderr


def check_sampling_replays_draws(impl, seed, generator, num_samples=48):
    """impl.sampling (float64) == the documented Philox draws replayed in Python, to rounding."""
    A = 2 * torch.randn(2, 3, 3, generator=generator, dtype=torch.float64)
    rm = torch.tensor([[True, False, True], [True, True, True]])
    pm = torch.tensor([[True, True, True], [False, True, True]])
    value, stderr = impl.sampling(A, rm, pm, num_samples, seed)
    want_value, want_stderr = replayed_sampling(A, rm, pm, num_samples, seed)
    torch.testing.assert_close(value, want_value, rtol=0, atol=1e-10)
    torch.testing.assert_close(stderr, want_stderr, rtol=0, atol=1e-10)
