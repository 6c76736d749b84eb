"""Token-level scores of candidate regions (spec Eq. 7 and phi([R])), batched over image-text pairs.

For region R (n_R patches) of pair b, in that pair's game v1 over its real tokens X, with S a
subset of X\\R drawn by the q-trick (q ~ U(0, 1), each player of X\\R kept with probability q:
exactly c uniform over 0..|X| - n_R, then S uniform among the size-c subsets), the scores are

    "interaction"           I([R]) = E_q E_S [ v1(S u R) - sum_{x in R} v1(S u {x}) + (n_R - 1) v1(S) ]  (Eq. 7)
    "phi"                   phi([R]) = E_q E_S [ v1(S u R) - v1(S) ]: the Shapley value (Eq. 3) of R
                            taken as one player [R] in the game over X\\R plus [R]; the first
                            bracket of Eq. 7's term, 2 image halves per sample instead of n_R + 2
    "negative_interaction"  -I([R]) (the sign-corrected form)
    "magnitude"             |I([R])|, estimated as |estimate of I([R])|: exact for method="exact";
                            sampled, it is biased upwards, by at most the standard error
                            (0 <= E|I^| - |I| <= E|I^ - I| <= stderr), most where I is near 0

A region of one patch has I([R]) = 0 exactly (the terms cancel); its phi is the patch's own
Shapley value. Several scores asked at once are computed on the same draws.

Estimators for ``method="sampling"`` (same expectation; ``num_samples`` J per region):
  "antithetic" (default): "stratified" with two more exact steps.
      (1) Complementary strata: for J even (>= 4), stratum J-1-j reuses stratum j's random
      numbers as complements, q_{J-1-j} = 1 - q_j, base image half and text half complemented
      within the pair's real tokens (S' = X\\R \\ S): every stratum keeps its distribution, and a
      coalition near empty is paired with one near full. The pair means (J / 2 independent
      units, one per stratum of (0, 1/2)) give the collapsed-strata standard error. Odd J: no
      pairing.
      (2) The text half in expectation: a pair with at most TEXT_EXACT_HALVES text halves
      (7 real text tokens) has all its text halves encoded once and each stratum
      pairs its image halves with E[t(T) | q_j] (``_expected_text_directions``: v1 is linear in
      the text direction given the image half): the text half's variance is gone, at 2^l text
      encodings per pair instead of J. A longer text pairs each stratum's image halves with the
      mean direction of TEXT_POOL_HALVES text halves drawn at q_j (an unbiased estimate of
      E[t(T) | q_j] with 1 / TEXT_POOL_HALVES the variance of one half; J * TEXT_POOL_HALVES
      text encodings per pair, shared by its regions).
      Measured on a trained run's real candidates, short and long captions (benchmarks/RESULTS.md):
      2-5x lower variance than "stratified" and 3-7x lower than "paper" at equal game evaluations.
  "stratified": q is stratified, q_j = (j + u_j) / J (``_strata``), one draw per
      stratum; the J strata are shared by all regions of a pair, as are their random numbers
      (common random numbers: one base image half per stratum, S = base \\ R, so candidate
      regions of one image are compared on the same coalitions) and the stratum's text half
      (the text half never depends on the region: encoded once per stratum and pair, not once
      per region). Standard errors: collapsed strata (``_strata.strata_stderr``).
  "control_variate": "stratified" plus cross-fitted control variates: every player's presence
      bit minus q (mean 0 given q) as features, coefficients of the even strata fitted on the odd
      ones and vice versa (``_strata.crossfit_control``: exactly unbiased; standard error with a
      degrees-of-freedom factor). Pays off once J is several times the number of players
      (benchmarks/RESULTS.md); below that the fits are noisy and it is worse than "stratified".
  "paper": the paper's plain Monte Carlo estimator: an independent q and joint coalition per
      sample and region; standard error std / sqrt(J).
One sample costs n_R + 2 game evaluations (2 for "phi" alone); all coalitions of all regions
and pairs form one stream per tower, whose distinct halves are encoded once in chunks of
``max_batch`` rows (default: ``defaults.default_tokens_per_call`` tokens per call). Values are cosines of
L2-normalised embeddings, so v1 = image direction . text direction.

``method="exact"`` enumerates each pair's game through its dual-encoder factorisation (every
distinct half encoded once, the 2^n value table an outer cosine product) and the library's exact
machinery (``_enumeration.exact_indices``); tests check it against brute-force Eq. 4 and Eq. 3.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_has_values, check_num_samples, check_seed, check_shape, check_tensor, result_dtype
from .._enumeration import all_coalitions, exact_indices
from .._estimate import Estimate
from .._budget import check_budget, samples_within
from .._strata import crossfit_control, iid_stderr, strata_stderr, stratified_uniform
from ..estimators import EXACT_MAX_PLAYERS, choose_method
from .game import check_encoders, check_tokens, encode_halves, resolve_max_batch

METHODS = ("auto", "exact", "sampling")
SCORES = ("interaction", "phi", "negative_interaction", "magnitude")
ESTIMATORS = ("antithetic", "control_variate", "stratified", "paper")
# "antithetic": a pair whose text half has at most TEXT_EXACT_HALVES distinct values (2^real
# text tokens: up to 7 tokens) gets the exact expectation over its text half, a longer one
# TEXT_POOL_HALVES text halves per stratum; enumeration costs no more than the pool at 16 samples
TEXT_POOL_HALVES = 8
TEXT_EXACT_HALVES = 16 * TEXT_POOL_HALVES


def _pair_evaluations(region_sizes, num_samples: int, singles: bool) -> int:
    """Game evaluations sampling spends on one pair: num_samples * sum_k (n_R_k + 2), or
    num_samples * 2 per region when no Eq. 7 term is needed (``singles`` False: "phi" only)."""
    return num_samples * sum((int(s) + 2) if singles else 2 for s in region_sizes)


def choose_region_method(n_players: int, region_sizes, num_samples: int, *, singles: bool = True) -> str:
    """What ``method="auto"`` does for one pair: ``estimators.choose_method`` with the game
    evaluations sampling would spend, num_samples * sum_k (n_R_k + 2) (``singles=False``, the
    cost of "phi" alone: num_samples * 2 per region): "exact" when n_players is within
    ``estimators.EXACT_MAX_PLAYERS`` and 2^n_players is no more, else "sampling"."""
    return choose_method(n_players, _pair_evaluations(region_sizes, num_samples, singles))


def _budget_plan(budget, method: str, n_players, sizes, singles: bool):
    """(method, num_samples) for a per-pair ``budget``: "exact" where every pair's 2^n fits
    (``method`` "exact" or "auto"), else "sampling" with the samples the dearest pair affords;
    ValueError naming ``budget`` and the minimum otherwise."""
    check_budget(budget, 1, "region_interaction")
    exact_cost = max(2 ** n for n in n_players)
    if method == "exact":
        check_budget(budget, exact_cost, "method='exact' (2^n of the largest pair)")
    if method != "sampling" and exact_cost <= budget and max(n_players) <= EXACT_MAX_PLAYERS:
        return "exact", None
    per_sample = max(_pair_evaluations(sizes[b].tolist(), 1, singles) for b in range(len(n_players)))
    check_budget(budget, 2 * per_sample, f"sampling here (2 samples of {per_sample} evaluations per pair)")
    return "sampling", samples_within(budget, per_sample)


def _check_mask(name, mask, B, N, device):
    if mask is None:
        return torch.ones(B, N, dtype=torch.bool, device=device)
    check_tensor(name, mask, dims=2, dtype_kind="bool")
    check_has_values(name, mask)
    return check_shape(name, mask, (B, N)).to(device)


def _check_scores(score):
    """A score name or a non-empty tuple/list of names -> (tuple of distinct names, as_dict)."""
    if isinstance(score, str):
        return (check_choice("score", score, SCORES),), False
    if not isinstance(score, (tuple, list)) or not score:
        raise ValueError(f"score must be one of {list(SCORES)} or a non-empty tuple of them, got {score!r}")
    for name in score:
        check_choice("score", name, SCORES)
    return tuple(dict.fromkeys(score)), True


def _draw_paper(regions, image_mask, text_mask, num_samples, generator):
    """The paper's draws: an independent q and coalition per (pair, region, sample).

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


def _draw_stratified(regions, image_mask, text_mask, num_strata, generator, paired=False, text_pool=1):
    """Stratified draws shared by the regions of a pair: one q_j per stratum and pair, one base
    image half (S = base \\ R per region: common random numbers) and ``text_pool`` independent
    text halves per stratum. ``paired`` (J even): stratum J-1-j takes the complements of stratum
    j's halves and q_{J-1-j} = 1 - q_j (each still U(0, 1) on its stratum with Bernoulli(q) halves).

    Returns (q float[B, J, 1], s_img bool[B, K, J, N_I], s_txt bool[B, J, P, N_T]), P = text_pool.
    """
    B, K, N_I = regions.shape
    N_T = text_mask.shape[1]
    dev = regions.device
    q = stratified_uniform((B,), num_strata, generator, dev)[..., None]  # [B, J, 1]
    base = (torch.rand(B, num_strata, N_I, generator=generator, device=dev) < q) & image_mask[:, None, :]
    real_txt = text_mask[:, None, None, :]
    s_txt = (torch.rand(B, num_strata, text_pool, N_T, generator=generator, device=dev) < q[..., None]) & real_txt
    if paired:
        h = num_strata // 2
        q = torch.cat([q[:, :h], (1 - q[:, :h]).flip(1)], 1)
        base = torch.cat([base[:, :h], (image_mask[:, None, :] & ~base[:, :h]).flip(1)], 1)
        s_txt = torch.cat([s_txt[:, :h], (real_txt & ~s_txt[:, :h]).flip(1)], 1)
    s_img = base[:, None] & ~regions[:, :, None, :]
    return q, s_img, s_txt


def _directions(encoder, tokens, keep, token_mask, baseline, max_batch, dtype):
    """Unit global embeddings of coalition halves: keep bool[B, ..., N] -> float[B, ..., d]
    (a zero embedding stays zero, so its cosines are 0)."""
    B, N = keep.shape[0], keep.shape[-1]
    flat = keep.reshape(-1, N)
    pair = torch.arange(B, device=keep.device).repeat_interleave(flat.shape[0] // B)
    emb = encode_halves(encoder, tokens, pair, flat, baseline=baseline, max_batch=max_batch,
                        token_mask=token_mask)
    return F.normalize(emb.to(dtype), dim=-1, eps=1e-12).view(*keep.shape[:-1], -1)


def _pooled_directions(text_encoder, text_tokens, s_txt, text_mask, baseline, max_batch, dtype):
    """Mean unit text direction of each stratum's pool: s_txt bool[B, J, P, N_T] -> float[B, J, d]
    (for P = 1 the one half's unit direction itself)."""
    return _directions(text_encoder, text_tokens, s_txt, text_mask, baseline, max_batch, dtype).mean(2)


def _expected_text_directions(text_encoder, text_tokens, q, s_txt, text_mask, baseline, max_batch, dtype):
    """Text directions each stratum pairs with: float[B, J, d] from q float[B, J] and the
    sampled text pools s_txt bool[B, J, P, N_T].

    A pair with 2^l <= TEXT_EXACT_HALVES text halves (l real text tokens) gets the exact
    conditional expectation E[t(T) | q_j] = sum_T q_j^|T| (1 - q_j)^(l - |T|) t(T) over all its
    halves T, encoded once for every stratum; v1 is linear in the text direction given the image
    half (v1 = image direction . text direction) and the halves are independent given q, so each
    stratum's term keeps its conditional expectation and loses the text half's variance. Other
    pairs use the mean unit direction of their stratum's pool (``_pooled_directions``).
    """
    B, J = q.shape
    lengths = text_mask.sum(1)
    exact = lengths <= TEXT_EXACT_HALVES.bit_length() - 1  # 2^l <= TEXT_EXACT_HALVES
    if not bool(exact.any()):
        return _pooled_directions(text_encoder, text_tokens, s_txt, text_mask, baseline, max_batch, dtype)
    pairs = exact.nonzero().flatten().tolist()
    keep, pair = _pair_halves(text_mask, pairs)
    emb = encode_halves(text_encoder, text_tokens, pair, keep, baseline=baseline, max_batch=max_batch,
                        token_mask=text_mask)
    t = F.normalize(emb.to(dtype), dim=-1, eps=1e-12)  # [halves, d]
    size = keep.sum(1, keepdim=True).to(dtype)
    qh = q[pair].to(dtype)  # [halves, J]
    weight = qh ** size * (1 - qh) ** (lengths[pair, None].to(dtype) - size)
    mean = torch.zeros(B, J, t.shape[1], dtype=dtype, device=q.device)
    counts = [2 ** int(lengths[b]) for b in pairs]
    for b, w, t_b in zip(pairs, weight.split(counts), t.split(counts)):  # [2^l, J], [2^l, d]
        mean[b] = w.T @ t_b
    sampled = (~exact).nonzero().flatten()
    if len(sampled):
        mean[sampled] = _pooled_directions(text_encoder, text_tokens[sampled], s_txt[sampled], text_mask[sampled],
                                           baseline, max_batch, dtype)
    return mean


def _sample_terms(image_encoder, image_tokens, regions, image_mask, s_img, text_dir, singles,
                  baseline, max_batch, dtype):
    """Per-sample terms of every (pair, region, sample).

    s_img bool[B, K, S, N_I] (the sampled image halves of S), text_dir float[B, K, S, d] (unit
    text embedding each sample pairs with). Returns {"phi": float[B, K, S] (v1(S u R) - v1(S)),
    "interaction": float[B, K, S] (Eq. 7's term), only when ``singles``}.
    """
    B, K, S, N_I = s_img.shape
    dev = regions.device
    full = s_img | regions[:, :, None, :]
    # singletons S u {x}: one row per (region member m, sample s); none for "phi" alone
    mb, mk, mx = regions.nonzero(as_tuple=True) if singles else (regions.new_zeros(0, dtype=torch.long),) * 3
    M = len(mb)
    single = s_img[mb, mk].clone()  # [M, S, N_I]
    single[torch.arange(M, device=dev)[:, None], torch.arange(S, device=dev), mx[:, None]] = True
    rows = torch.cat([full.reshape(-1, N_I), s_img.reshape(-1, N_I), single.reshape(-1, N_I)])
    pair = torch.cat([torch.arange(B, device=dev).repeat_interleave(K * S).repeat(2),
                      mb.repeat_interleave(S)])
    emb = encode_halves(image_encoder, image_tokens, pair, rows, baseline=baseline,
                        max_batch=max_batch, token_mask=image_mask)
    e = F.normalize(emb.to(dtype), dim=-1, eps=1e-12)
    n = B * K * S
    t = text_dir.reshape(n, -1)
    v_full = (e[:n] * t).sum(-1).view(B, K, S)
    v_empty = (e[n:2 * n] * t).sum(-1).view(B, K, S)
    if not singles:
        return {"phi": v_full - v_empty}
    v_single = (e[2 * n:].view(M, S, -1) * text_dir[mb, mk]).sum(-1)  # [M, S]
    single_sum = torch.zeros(B * K, S, dtype=dtype, device=dev)
    single_sum.index_add_(0, mb * K + mk, v_single)
    n_r = regions.sum(-1).to(dtype)[..., None]  # [B, K, 1]
    return {"phi": v_full - v_empty, "interaction": v_full - single_sum.view(B, K, S) + (n_r - 1) * v_empty}


def stratified_terms(image_encoder, text_encoder, image_tokens, text_tokens, regions, image_mask,
                     text_mask, baseline, num_samples, generator, max_batch, dtype, singles, estimator,
                     paired):
    """The draws and per-stratum terms of a stratified estimator ("antithetic", "stratified" or
    "control_variate"), before any averaging: (q float[B, J, 1], s_img bool[B, K, J, N_I],
    s_txt bool[B, J, P, N_T], {"phi": float[B, K, J], "interaction": float[B, K, J] when
    ``singles``}). ``paired`` (J even, >= 4): stratum J-1-j is stratum j's complement
    (``_draw_stratified``; ``pair_means`` gives the independent units)."""
    B, K, _ = regions.shape
    pool = TEXT_POOL_HALVES if estimator == "antithetic" else 1
    q, s_img, s_txt = _draw_stratified(regions, image_mask, text_mask, num_samples, generator, paired, pool)
    if estimator == "antithetic":
        text_dir = _expected_text_directions(text_encoder, text_tokens, q[..., 0], s_txt, text_mask,
                                             baseline, max_batch, dtype)
    else:
        text_dir = _pooled_directions(text_encoder, text_tokens, s_txt, text_mask, baseline, max_batch, dtype)
    text_dir = text_dir[:, None].expand(B, K, *text_dir.shape[1:])
    terms = _sample_terms(image_encoder, image_tokens, regions, image_mask, s_img, text_dir, singles,
                          baseline, max_batch, dtype)
    return q, s_img, s_txt, terms


def pair_means(terms: dict) -> dict:
    """Means of the complementary strata pairs (j, J-1-j): {name: float[..., J]} -> {name: float[..., J/2]},
    unit j pairing stratum j with stratum J-1-j."""
    half = next(iter(terms.values())).shape[-1] // 2
    return {name: (t[..., :half] + t[..., half:].flip(-1)) / 2 for name, t in terms.items()}


def _sampling(image_encoder, text_encoder, image_tokens, text_tokens, regions, image_mask,
              text_mask, baseline, num_samples, generator, max_batch, dtype, singles, estimator):
    """Monte Carlo scores of every (pair, region): {"phi": (value, stderr), "interaction":
    (value, stderr) when ``singles``}, each float[B, K]."""
    B, K, _ = regions.shape
    paired = estimator == "antithetic" and num_samples % 2 == 0 and num_samples >= 4
    if estimator == "paper":
        s_img, s_txt = _draw_paper(regions, image_mask, text_mask, num_samples, generator)
        text_dir = _directions(text_encoder, text_tokens, s_txt, text_mask, baseline, max_batch, dtype)
        terms = _sample_terms(image_encoder, image_tokens, regions, image_mask, s_img, text_dir,
                              singles, baseline, max_batch, dtype)
        return {name: (t.mean(-1), iid_stderr(t)) for name, t in terms.items()}
    q, s_img, s_txt, terms = stratified_terms(image_encoder, text_encoder, image_tokens, text_tokens, regions,
                                              image_mask, text_mask, baseline, num_samples, generator,
                                              max_batch, dtype, singles, estimator, paired)
    if estimator == "control_variate":  # features: each player's presence minus q, 0 off X\\R
        players = (image_mask[:, None, :] & ~regions)[:, :, None, :].to(dtype)
        features = torch.cat([(s_img.to(dtype) - q[:, None].to(dtype)) * players,
                              ((s_txt[:, :, 0].to(dtype) - q.to(dtype)) * text_mask[:, None, :].to(dtype))[:, None]
                              .expand(B, K, -1, -1)], -1)
        adjusted = {name: crossfit_control(t, features) for name, t in terms.items()}
        return {name: (t.mean(-1), strata_stderr(t) * factor) for name, (t, factor) in adjusted.items()}
    if paired:  # pair means are the independent units
        terms = pair_means(terms)
    return {name: (t.mean(-1), strata_stderr(t)) for name, t in terms.items()}


def _all_halves(mask: torch.Tensor) -> torch.Tensor:
    """Every subset of the True positions of mask bool[N]: bool[2^m, N] (row U: bit j of U <=>
    the j-th True position present), m = mask.sum()."""
    players = mask.nonzero().flatten()
    m = len(players)
    keep = mask.new_zeros(2 ** m, mask.shape[0])
    keep[:, players] = all_coalitions(0, 2 ** m, m, mask.device)
    return keep


def _pair_halves(mask: torch.Tensor, pairs):
    """Every half of the real tokens of each listed pair, pair after pair: (keep bool[H, N],
    pair long[H]) from mask bool[B, N], H = sum over the pairs of 2^(real tokens)."""
    keep = torch.cat([_all_halves(mask[b]) for b in pairs])
    counts = torch.tensor([2 ** int(mask[b].sum()) for b in pairs], device=mask.device)
    return keep, torch.tensor(list(pairs), dtype=torch.long, device=mask.device).repeat_interleave(counts)


def _exact(image_encoder, text_encoder, image_tokens, text_tokens, regions, image_mask, text_mask,
           baseline, max_batch, dtype):
    """Scores by enumeration: ({"interaction": float[B, K] (Eq. 7), "phi": float[B, K]},
    evaluations LongTensor[B]).

    The dual encoder factorises the value table: v(U) = cos(f_I(U_I), f_T(U_T)), so every
    image half (2^n_I) and text half (2^n_T) of all pairs is encoded once in one stream per
    tower, the 2^n table is the outer cosine product, and ``_enumeration.exact_indices`` (the
    library's exact machinery) derives each region's interaction and phi([R]) from it.
    """
    B, K, _ = regions.shape
    n_img, n_txt = image_mask.sum(1).tolist(), text_mask.sum(1).tolist()
    for b in range(B):
        if n_img[b] + n_txt[b] > EXACT_MAX_PLAYERS:
            raise ValueError(f"pair {b} has n = {n_img[b] + n_txt[b]} players, beyond the exact limit "
                             f"EXACT_MAX_PLAYERS = {EXACT_MAX_PLAYERS}; use method='sampling'")
    embeddings = []
    for encoder, tokens, mask, counts in ((image_encoder, image_tokens, image_mask, n_img),
                                          (text_encoder, text_tokens, text_mask, n_txt)):
        keep, pair = _pair_halves(mask, range(B))
        emb = encode_halves(encoder, tokens, pair, keep, baseline=baseline, max_batch=max_batch,
                            token_mask=mask)
        embeddings.append(F.normalize(emb.to(dtype), dim=-1, eps=1e-12).split([2 ** c for c in counts]))
    value = torch.zeros(B, K, dtype=dtype, device=regions.device)
    phi = torch.zeros_like(value)
    for b in range(B):
        n = n_img[b] + n_txt[b]
        table = (embeddings[1][b] @ embeddings[0][b].T).reshape(-1)  # row U = low image bits, high text bits
        players = regions[b][:, image_mask[b]]  # [K, n_I] over the real patches
        targets = torch.cat([players, players.new_zeros(K, n_txt[b])], dim=1)
        multi = players.sum(1) >= 2  # a one-patch region's interaction is 0 exactly
        if bool(multi.any()):
            value[b, multi] = exact_indices(table.double(), n, targets[multi], False).to(dtype)
        phi[b] = exact_indices(table.double(), n, targets, True).to(dtype)
    evaluations = torch.tensor([2 ** (i + t) for i, t in zip(n_img, n_txt)], dtype=torch.long)
    return {"interaction": value, "phi": phi}, evaluations


def _derive(score: str, base: dict, evaluations: torch.Tensor) -> Estimate:
    """Estimate of one score from the base estimates {"interaction"/"phi": (value, stderr)}."""
    if score == "phi":
        value, stderr = base["phi"]
    else:
        value, stderr = base["interaction"]
        value = {"interaction": value, "negative_interaction": -value, "magnitude": value.abs()}[score]
    return Estimate(value, stderr.clone(), evaluations.clone())


def region_interaction(image_encoder, text_encoder, image_tokens: torch.Tensor,
                       text_tokens: torch.Tensor, regions: torch.Tensor, *,
                       image_mask: Optional[torch.Tensor] = None,
                       text_mask: Optional[torch.Tensor] = None, baseline: str = "zero",
                       method: str = "auto", num_samples: Optional[int] = None,
                       seed: Optional[int] = None, max_batch: Optional[int] = None,
                       score="interaction", estimator: str = "antithetic", budget: Optional[int] = None):
    """Token-level scores (module docstring) of every candidate region of every pair, in pair
    b's game v1: by default I([R_k]) of spec Eq. 7.

    image_tokens float[B, N_I, D_I], text_tokens float[B, N_T, D_T] (before position embeddings),
    regions bool[B, K, N_I] (each region's patches, at least one, none of them padding),
    image_mask bool[B, N_I] / text_mask bool[B, N_T] (padding: never a player, never present).
    method: "sampling" (num_samples per region, default 500, at least 2), "exact" (enumeration,
    n_I + n_T within estimators.EXACT_MAX_PLAYERS) or "auto" (exact when
    ``choose_region_method`` says so for every pair). seed: int for reproducible draws, None
    for torch's global generator. budget: game evaluations per pair (each pair is its own
    game), never exceeded; then num_samples is ignored: "auto" is exact when 2^n of every pair
    fits, else the sampler gets min over pairs of floor(budget / evaluations per sample)
    samples (at least 2: the minimum budget is twice the dearest pair's sample).
    score: "interaction" (Eq. 7), "phi" (phi([R]), R as one player), "negative_interaction"
    (-Eq. 7) or "magnitude" (|Eq. 7|, biased upwards when sampled), or a tuple of these names:
    then a dict name -> Estimate, all computed on the same draws (the cost is that of the
    dearest: n_R + 2 evaluations per sample if any Eq. 7 form is asked, 2 for "phi" alone).
    estimator: "antithetic" (default: "stratified" plus complementary strata pairs and the exact
    expectation over short text halves), "stratified" (stratified q, strata and text halves
    shared by the regions of a pair, common random numbers), "control_variate" (stratified plus cross-fitted
    presence-bit control variates; for num_samples well above n_I + n_T) or "paper" (the
    paper's plain sampler), for method="sampling"; all unbiased, same evaluations.
    Returns Estimate(value float[B, K], stderr float[B, K] (zeros for exact),
    evaluations LongTensor[B] (game evaluations spent per pair)), or a dict of them.
    """
    check_encoders(image_encoder, text_encoder, baseline)
    check_choice("method", method, METHODS)
    check_choice("estimator", estimator, ESTIMATORS)
    scores, as_dict = _check_scores(score)
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
    seed = check_seed(seed)
    dtype = result_dtype(image_tokens)
    singles = scores != ("phi",)
    if regions.shape[1] == 0:  # no candidate region: nothing to evaluate
        empty = torch.zeros(B, 0, dtype=dtype, device=dev)
        base = {"interaction": (empty, empty), "phi": (empty, empty)}
        evaluations = torch.zeros(B, dtype=torch.long)
    else:
        n_players = (image_mask.sum(1) + text_mask.sum(1)).tolist()
        if budget is not None:
            method, num_samples = _budget_plan(budget, method, n_players, sizes, singles)
        if method == "auto":
            picks = {choose_region_method(n, sizes[b].tolist(), num_samples, singles=singles)
                     for b, n in enumerate(n_players)}
            method = "exact" if picks == {"exact"} else "sampling"
        if method == "sampling" and num_samples < 2:
            raise ValueError(f"num_samples must be at least 2 for sampling (a standard error), got {num_samples}")
        with torch.inference_mode():
            if method == "exact":
                values, evaluations = _exact(image_encoder, text_encoder, image_tokens, text_tokens,
                                             regions, image_mask, text_mask, baseline, max_batch, dtype)
                base = {name: (v, torch.zeros_like(v)) for name, v in values.items()}
            else:
                generator = None if seed is None else torch.Generator(device=dev).manual_seed(seed)
                base = _sampling(image_encoder, text_encoder, image_tokens, text_tokens, regions,
                                 image_mask, text_mask, baseline, num_samples, generator,
                                 max_batch, dtype, singles, estimator)
                evaluations = torch.tensor([_pair_evaluations(sizes[b].tolist(), num_samples, singles)
                                            for b in range(B)], dtype=torch.long)
    out = {name: _derive(name, base, evaluations) for name in scores}
    return out if as_dict else out[scores[0]]
