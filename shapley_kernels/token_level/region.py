"""Token-level interaction of candidate regions (spec Eq. 7), batched over image-text pairs.

For region R (n_R patches) of pair b, in that pair's game v1 over its real tokens X:

    I([R]) = E_c E_{S subset X\\R, |S| = c} [ v1(S u R) - sum_{x in R} v1(S u {x}) + (n_R - 1) v1(S) ]

with c uniform over 0..|X| - n_R. Sampling draws q ~ U(0, 1) per sample and keeps every player
of X\\R with probability q: that gives exactly c uniform, then S uniform among the size-c subsets
(a Beta(1, 1) integral), with no sort. One sample costs n_R + 2 game evaluations; all samples of
all regions and pairs form one coalition stream per tower, whose distinct halves are encoded once
(the n_R + 2 terms of a sample share their text half) in chunks of ``max_batch`` rows
(default: ``game.TOKENS_PER_CALL`` tokens per call).

A region of one patch has I([R]) = 0 exactly (the terms cancel). ``method="exact"`` enumerates
each pair's game through its dual-encoder factorisation (every distinct half encoded once, the
2^n value table an outer cosine product) and the library's exact machinery
(``_enumeration.exact_indices``); tests check it against brute-force Eq. 4.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .._checks import check_choice, check_num_samples, check_shape, check_tensor, result_dtype
from .._estimate import Estimate
from .game import check_encoders, check_tokens, cosine, encode_halves, resolve_max_batch

METHODS = ("auto", "exact", "sampling")


def choose_region_method(n_players: int, region_sizes, num_samples: int) -> str:
    """What ``method="auto"`` does for one pair: ``estimators.choose_method`` with the game
    evaluations sampling would spend, num_samples * sum_k (n_R_k + 2): "exact" when n_players
    is within ``estimators.EXACT_MAX_PLAYERS`` and 2^n_players is no more, else "sampling"."""
    from ..estimators import choose_method

    return choose_method(n_players, num_samples * sum(int(s) + 2 for s in region_sizes))


def _check_mask(name, mask, B, N, device):
    if mask is None:
        return torch.ones(B, N, dtype=torch.bool, device=device)
    check_tensor(name, mask, dims=2, dtype_kind="bool")
    return check_shape(name, mask, (B, N)).to(device)


def _sample_terms(regions, image_mask, text_mask, num_samples, generator):
    """Draw the coalitions of every sample of every region.

    regions bool[B, K, N_I]; masks bool[B, N_I] / bool[B, N_T]. Returns
    (s_img bool[B, K, S, N_I], s_txt bool[B, K, S, N_T]): the sampled S of each sample.
    """
    B, K, N_I = regions.shape
    N_T = text_mask.shape[1]
    dev = regions.device
    q = torch.rand(B, K, num_samples, 1, generator=generator, device=dev)
    s_img = torch.rand(B, K, num_samples, N_I, generator=generator, device=dev) < q
    s_txt = torch.rand(B, K, num_samples, N_T, generator=generator, device=dev) < q
    s_img &= (image_mask[:, None, :] & ~regions)[:, :, None, :]
    s_txt &= text_mask[:, None, None, :]
    return s_img, s_txt


def _sampling(image_encoder, text_encoder, image_tokens, text_tokens, regions, image_mask,
              text_mask, baseline, num_samples, generator, max_batch, dtype):
    """Monte Carlo Eq. 7 for every (pair, region): (value float[B, K], stderr float[B, K])."""
    B, K, N_I = regions.shape
    S, dev = num_samples, regions.device
    s_img, s_txt = _sample_terms(regions, image_mask, text_mask, S, generator)
    # one row per sample for S u R, S and the text half: [B*K*S]
    pair = torch.arange(B, device=dev).repeat_interleave(K * S)
    full = (s_img | regions[:, :, None, :]).reshape(-1, N_I)
    empty = s_img.reshape(-1, N_I)
    # singletons S u {x}: one row per (region member m, sample s)
    mb, mk, mx = regions.nonzero(as_tuple=True)
    M = len(mb)
    sample_of = ((mb * K + mk) * S)[:, None] + torch.arange(S, device=dev)  # [M, S] row in full/empty
    single = empty[sample_of.flatten()].clone()
    single[torch.arange(M * S, device=dev), mx.repeat_interleave(S)] = True
    keep_img = torch.cat([full, empty, single])
    pair_img = torch.cat([pair, pair, pair[sample_of.flatten()]])
    e_img = encode_halves(image_encoder, image_tokens, pair_img, keep_img, baseline=baseline,
                          max_batch=max_batch, token_mask=image_mask)
    e_txt = encode_halves(text_encoder, text_tokens, pair, s_txt.reshape(B * K * S, s_txt.shape[-1]),
                          baseline=baseline, max_batch=max_batch, token_mask=text_mask)
    n = B * K * S
    v_full = cosine(e_img[:n], e_txt, dtype)
    v_empty = cosine(e_img[n:2 * n], e_txt, dtype)
    v_single = cosine(e_img[2 * n:], e_txt[sample_of.flatten()], dtype)
    n_r = regions.sum(-1).to(dtype).reshape(-1, 1)  # [B*K, 1]
    single_sum = torch.zeros(B * K, S, dtype=dtype, device=dev)
    single_sum.index_add_(0, mb * K + mk, v_single.view(M, S))
    terms = v_full.view(B * K, S) - single_sum + (n_r - 1) * v_empty.view(B * K, S)
    value = terms.mean(1).view(B, K)
    stderr = (terms.std(1, correction=1) / S ** 0.5).view(B, K)
    return value, stderr


def _all_halves(mask: torch.Tensor) -> torch.Tensor:
    """Every subset of the True positions of mask bool[N]: bool[2^m, N] (row U: bit j of U <=>
    the j-th True position present), m = mask.sum()."""
    from .._enumeration import all_coalitions

    players = mask.nonzero().flatten()
    m = len(players)
    keep = mask.new_zeros(2 ** m, mask.shape[0])
    keep[:, players] = all_coalitions(0, 2 ** m, m, mask.device)
    return keep


def _exact(image_encoder, text_encoder, image_tokens, text_tokens, regions, image_mask, text_mask,
           baseline, max_batch, dtype):
    """Eq. 7 by enumeration: (value float[B, K], evaluations LongTensor[B]).

    The dual encoder factorises the value table: v(U) = cos(f_I(U_I), f_T(U_T)), so every
    image half (2^n_I) and text half (2^n_T) of all pairs is encoded once in one stream per
    tower, the 2^n table is the outer cosine product, and ``_enumeration.exact_indices`` (the
    library's exact machinery) derives each region's interaction from it.
    """
    from .._enumeration import exact_indices
    from ..estimators import EXACT_MAX_PLAYERS

    B, K, _ = regions.shape
    n_img, n_txt = image_mask.sum(1).tolist(), text_mask.sum(1).tolist()
    for b in range(B):
        if n_img[b] + n_txt[b] > EXACT_MAX_PLAYERS:
            raise ValueError(f"pair {b} has n = {n_img[b] + n_txt[b]} players, beyond the exact limit "
                             f"EXACT_MAX_PLAYERS = {EXACT_MAX_PLAYERS}; use method='sampling'")
    embeddings = []
    for encoder, tokens, mask, counts in ((image_encoder, image_tokens, image_mask, n_img),
                                          (text_encoder, text_tokens, text_mask, n_txt)):
        keep = torch.cat([_all_halves(mask[b]) for b in range(B)])
        pair = torch.arange(B, device=keep.device).repeat_interleave(
            torch.tensor([2 ** c for c in counts], device=keep.device))
        emb = encode_halves(encoder, tokens, pair, keep, baseline=baseline, max_batch=max_batch,
                            token_mask=mask)
        embeddings.append(F.normalize(emb.to(dtype), dim=-1, eps=1e-12).split([2 ** c for c in counts]))
    value = torch.zeros(B, K, dtype=dtype, device=regions.device)
    for b in range(B):
        n = n_img[b] + n_txt[b]
        table = (embeddings[1][b] @ embeddings[0][b].T).reshape(-1)  # row U = low image bits, high text bits
        players = regions[b][:, image_mask[b]]  # [K, n_I] over the real patches
        targets = torch.cat([players, players.new_zeros(K, n_txt[b])], dim=1)
        multi = players.sum(1) >= 2  # a one-patch region's interaction is 0 exactly
        if bool(multi.any()):
            value[b, multi] = exact_indices(table.double(), n, targets[multi], False).to(dtype)
    evaluations = torch.tensor([2 ** (i + t) for i, t in zip(n_img, n_txt)], dtype=torch.long)
    return value, evaluations


def region_interaction(image_encoder, text_encoder, image_tokens: torch.Tensor,
                       text_tokens: torch.Tensor, regions: torch.Tensor, *,
                       image_mask: Optional[torch.Tensor] = None,
                       text_mask: Optional[torch.Tensor] = None, baseline: str = "zero",
                       method: str = "auto", num_samples: Optional[int] = None,
                       seed: Optional[int] = None, max_batch: Optional[int] = None) -> Estimate:
    """I([R_k]) of spec Eq. 7 for every candidate region of every pair, in pair b's game v1.

    image_tokens float[B, N_I, D_I], text_tokens float[B, N_T, D_T] (before position embeddings),
    regions bool[B, K, N_I] (each region's patches, at least one, none of them padding),
    image_mask bool[B, N_I] / text_mask bool[B, N_T] (padding: never a player, never present).
    method: "sampling" (num_samples per region, default 500, at least 2), "exact" (enumeration,
    n_I + n_T within estimators.EXACT_MAX_PLAYERS) or "auto" (exact when
    ``choose_region_method`` says so for every pair). seed: int for reproducible draws, None
    for torch's global generator.
    Returns Estimate(value float[B, K], stderr float[B, K] (zeros for exact),
    evaluations LongTensor[B] (game evaluations spent per pair)).
    """
    check_encoders(image_encoder, text_encoder, baseline)
    check_choice("method", method, METHODS)
    check_tokens("image_tokens", image_tokens, 3)
    check_tokens("text_tokens", text_tokens, 3)
    B, N_I, _ = image_tokens.shape
    if text_tokens.shape[0] != B:
        raise ValueError(f"text_tokens must hold B={B} pairs like image_tokens, got {text_tokens.shape[0]}")
    dev = image_tokens.device
    check_tensor("regions", regions, dims=3, dtype_kind="bool")
    check_shape("regions", regions, (B, None, N_I))
    regions = regions.to(dev)
    image_mask = _check_mask("image_mask", image_mask, B, N_I, dev)
    text_mask = _check_mask("text_mask", text_mask, B, text_tokens.shape[1], dev)
    if bool((regions & ~image_mask[:, None, :]).any()):
        raise ValueError("regions must not contain padded patches (image_mask False)")
    sizes = regions.sum(-1)
    if bool((sizes < 1).any()):
        raise ValueError("regions: every region must hold at least 1 patch")
    num_samples = check_num_samples(num_samples)
    max_batch = resolve_max_batch(max_batch)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    dtype = result_dtype(image_tokens)
    if regions.shape[1] == 0:  # no candidate region: nothing to evaluate
        empty = torch.zeros(B, 0, dtype=dtype, device=dev)
        return Estimate(empty, empty.clone(), torch.zeros(B, dtype=torch.long))
    n_players = (image_mask.sum(1) + text_mask.sum(1)).tolist()
    if method == "auto":
        picks = {choose_region_method(n, sizes[b].tolist(), num_samples) for b, n in enumerate(n_players)}
        method = "exact" if picks == {"exact"} else "sampling"
    with torch.inference_mode():
        if method == "exact":
            value, evaluations = _exact(image_encoder, text_encoder, image_tokens, text_tokens,
                                        regions, image_mask, text_mask, baseline, max_batch, dtype)
            return Estimate(value, torch.zeros_like(value), evaluations)
        if num_samples < 2:
            raise ValueError(f"num_samples must be at least 2 for sampling (a standard error), got {num_samples}")
        generator = None if seed is None else torch.Generator(device=dev).manual_seed(seed)
        value, stderr = _sampling(image_encoder, text_encoder, image_tokens, text_tokens, regions,
                                  image_mask, text_mask, baseline, num_samples, generator,
                                  max_batch, dtype)
    evaluations = (num_samples * (sizes + 2).sum(1)).cpu()
    return Estimate(value, stderr, evaluations)
