"""The alignment game of LOUPE's semantic level (spec section 4) and its region-phrase interactions.

Public: ``alignment_game``, ``region_phrase_interaction``, ``choose_alignment_method``,
``EXACT_LIMIT``. This module validates inputs and dispatches to a backend module
``shapley_kernels.alignment._<name>_backend`` (docs/CONTRACTS.md section 1), imported lazily so a
backend that is absent or not built never breaks the others.
"""
import importlib
from typing import Optional, Tuple, Union

import torch

from .._backends import EXACT_LIMIT, resolve_backend
from ..checks import check_choice, check_num_samples, check_seed, check_shape, check_tensor, result_dtype
from .._estimate import Estimate

# EXACT_LIMIT (from _backends, where the compiled kernels' limits are stated): the largest number
# of PRESENT regions and of present phrases (each) that the exact path accepts.
METHODS = ("auto", "exact", "sampling")

__all__ = ["alignment_game", "region_phrase_interaction", "choose_alignment_method", "EXACT_LIMIT"]


def _backend_module(name: str):
    return importlib.import_module(f"shapley_kernels.alignment._{name}_backend")


def _check_backend_name(backend) -> None:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")


def _prepare(A, region_mask, phrase_mask) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate A float[B, K, M] and the masks; return (A, region_mask, phrase_mask) as backends take them.

    A becomes float32 (float64 stays float64), contiguous, with the entries of padded rows and
    columns set to 0 (they are never read as logits, so they may hold anything, even NaN or -inf);
    a NaN or inf at a present (region, phrase) entry raises ValueError.
    """
    check_tensor("A", A, dims=3, dtype_kind="float")
    B, K, M = A.shape
    masks = []
    padded = region_mask is not None or phrase_mask is not None
    for name, mask, size in (("region_mask", region_mask, K), ("phrase_mask", phrase_mask, M)):
        if mask is None:
            mask = torch.ones(B, size, dtype=torch.bool, device=A.device)
        check_tensor(name, mask, dtype_kind="bool")
        check_shape(name, mask, (B, size))
        if mask.device != A.device:
            raise ValueError(f"{name} must be on A's device {A.device}, got {mask.device}")
        masks.append(mask.contiguous())
    region_mask, phrase_mask = masks
    A = A.to(result_dtype(A))
    if padded:
        entry = region_mask[:, :, None] & phrase_mask[:, None, :]
        A = A.masked_fill(~entry, 0.0)
    if not bool(torch.isfinite(A).all()):
        kind = "NaN" if bool(torch.isnan(A).any()) else "inf"
        raise ValueError(f"A contains {kind} values at present (region, phrase) entries")
    return A.contiguous(), region_mask, phrase_mask


def alignment_game(A: torch.Tensor, coalitions: torch.Tensor, region_mask: Optional[torch.Tensor] = None,
                   phrase_mask: Optional[torch.Tensor] = None, *, backend: str = "auto") -> torch.Tensor:
    """v2(S) of spec section 4 for every coalition: float[B, C].

    A: float[B, K, M] alignment logits; coalitions: bool[B, C, K + M] (players 0..K-1 regions,
    K..K+M-1 phrases); region_mask bool[B, K] / phrase_mask bool[B, M]: True = exists (None: all).
    A padded player is never present. Value: mean over present regions of the max of the row
    softmax over present phrases, and the same with columns, averaged; 0 when S has no present
    region or no present phrase. float64 in, float64 out; float32 otherwise.
    """
    _check_backend_name(backend)
    A, region_mask, phrase_mask = _prepare(A, region_mask, phrase_mask)
    B, K, M = A.shape
    check_tensor("coalitions", coalitions, dims=3, dtype_kind="bool")
    check_shape("coalitions", coalitions, (B, None, K + M))
    if coalitions.device != A.device:
        raise ValueError(f"coalitions must be on A's device {A.device}, got {coalitions.device}")
    name = resolve_backend(backend, A.device)
    if A.numel() == 0 or coalitions.shape[1] == 0:
        return A.new_zeros(B, coalitions.shape[1])
    return _backend_module(name).game(A, coalitions.contiguous(), region_mask, phrase_mask)


def choose_alignment_method(num_regions: int, num_phrases: int, method: str = "auto") -> str:
    """The method ``region_phrase_interaction`` runs: "exact" or "sampling".

    num_regions / num_phrases: the largest numbers of PRESENT regions / phrases in the batch.
    "auto" is "exact" whenever both are <= EXACT_LIMIT (20): the factorised exact path then costs
    at most 2 * 20 * 2^20 subset visits per matrix, fewer operations than 500-sample Monte Carlo
    at every size up to the limit (docs/alignment_exact.md section 5). "exact" beyond the limit
    raises ValueError.
    """
    check_choice("method", method, METHODS)
    within = num_regions <= EXACT_LIMIT and num_phrases <= EXACT_LIMIT
    if method == "exact" and not within:
        raise ValueError(
            f"method='exact' supports at most {EXACT_LIMIT} present regions and {EXACT_LIMIT} present "
            f"phrases per matrix, got {num_regions} and {num_phrases}; use method='sampling'"
        )
    if method == "auto":
        return "exact" if within else "sampling"
    return method


def _check_seed(seed) -> int:
    seed = check_seed(seed)
    return int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed


def region_phrase_interaction(A: torch.Tensor, region_mask: Optional[torch.Tensor] = None,
                              phrase_mask: Optional[torch.Tensor] = None, *, method: str = "auto",
                              num_samples: Optional[int] = None, seed: Optional[int] = None,
                              backend: str = "auto", return_stderr: bool = False
                              ) -> Union[torch.Tensor, Estimate]:
    """Pairwise Shapley interaction (spec Eq. 10) of every (region i, phrase j) in v2: float[B, K, M].

    A: float[B, K, M]; region_mask bool[B, K], phrase_mask bool[B, M] (None: all exist). The game
    of matrix b has the present players of b only; entries at padded regions / phrases are 0.
    method: "exact" (factorised, docs/alignment_exact.md; at most EXACT_LIMIT present regions and
    phrases), "sampling" (num_samples per pair, default 500, 4 game values per sample), or "auto"
    (see ``choose_alignment_method``). seed: int (same seed, device and backend: same result) or
    None (drawn from torch's global generator).
    return_stderr=True returns Estimate(value, stderr, evaluations): stderr float[B, K, M] (zeros
    for exact); evaluations (int) = for sampling, the v2 coalition values computed,
    4 * num_samples * sum_b K'_b M'_b; for exact, the subset terms r_i(U) the factorised path
    evaluates, sum_b (K'_b 2^M'_b + M'_b 2^K'_b) (K'_b, M'_b: present counts of matrix b).
    """
    _check_backend_name(backend)
    if not isinstance(return_stderr, bool):
        raise TypeError(f"return_stderr must be a bool, got {type(return_stderr).__name__}")
    A, region_mask, phrase_mask = _prepare(A, region_mask, phrase_mask)
    num_samples = check_num_samples(num_samples)
    seed = _check_seed(seed)
    counts = torch.stack([region_mask.sum(1), phrase_mask.sum(1)], 1).tolist()  # [[K'_b, M'_b]]
    k_max = max((k for k, _ in counts), default=0)
    m_max = max((m for _, m in counts), default=0)
    chosen = choose_alignment_method(k_max, m_max, method)
    name = resolve_backend(backend, A.device)
    if k_max == 0 or m_max == 0:
        value, stderr, evaluations = A.new_zeros(A.shape), A.new_zeros(A.shape), 0
    elif chosen == "exact":
        value = _backend_module(name).exact(A, region_mask, phrase_mask)
        stderr = torch.zeros_like(value)
        evaluations = sum(k * 2**m + m * 2**k for k, m in counts if k and m)
    else:
        if num_samples < 2:
            raise ValueError(f"num_samples must be at least 2 for sampling (a standard error needs two "
                             f"samples), got {num_samples}")
        value, stderr = _backend_module(name).sampling(A, region_mask, phrase_mask, num_samples, seed)
        evaluations = 4 * num_samples * sum(k * m for k, m in counts)
    return Estimate(value, stderr, evaluations) if return_stderr else value
