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


def check_game(backend, device, dtype, generator):
    """Backend game values == spec_v2 per coalition, with padding, empty / full coalitions, huge logits."""
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
    got = sk.alignment_game(A.to(device), coal.to(device), rm.to(device), pm.to(device), backend=backend)
    assert got.dtype == dtype and got.device.type == torch.device(device).type
    want = spec_game_values(A, coal, rm, pm)
    torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=tolerance(dtype))


def check_exact(backend, device, case, dtype, generator):
    """Backend exact SII == brute-force enumeration of spec Eq. 10 over spec_v2."""
    A, rm, pm = exact_case(case, dtype, generator)
    got = sk.region_phrase_interaction(A.to(device), rm.to(device), pm.to(device), method="exact",
                                       backend=backend)
    assert got.dtype == dtype and got.shape == A.shape
    want = brute_interactions(A, rm, pm)
    torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=tolerance(dtype))


def check_sampling(backend, device, seed, generator, num_samples=512):
    """Sampled SII within 5 standard errors of the exact value; same seed, same result; 0 at padding."""
    A = 2 * torch.randn(1, 2, 3, generator=generator, dtype=torch.float64)
    rm = torch.tensor([[True, True]])
    pm = torch.tensor([[True, False, True]])
    args = (A.float().to(device), rm.to(device), pm.to(device))
    est = sk.region_phrase_interaction(*args, method="sampling", num_samples=num_samples, seed=seed,
                                       backend=backend, return_stderr=True)
    want = brute_interactions(A.float(), rm, pm)
    value, stderr = est.value.cpu().double(), est.stderr.cpu().double()
    present = (rm[:, :, None] & pm[:, None, :])
    assert bool((stderr[present] > 0).all())
    assert bool(((value - want).abs()[present] <= 5 * stderr[present]).all()), (value, want, stderr)
    assert bool((value[~present] == 0).all()) and bool((stderr[~present] == 0).all())
    again = sk.region_phrase_interaction(*args, method="sampling", num_samples=num_samples, seed=seed,
                                         backend=backend)
    assert torch.equal(again, est.value)
    other = sk.region_phrase_interaction(*args, method="sampling", num_samples=num_samples, seed=seed + 1,
                                         backend=backend)
    assert not torch.equal(other, est.value)
