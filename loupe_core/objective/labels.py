"""Shapley labels for L_TSA and L_FSA: token level (spec Eq. 7), semantic level (spec Eq. 10).

Sources per level: "exact", "sampling", "hybrid" (spec section 5). Labels are constants: they
are computed without gradient, with the towers in eval mode (no dropout in the game), on
detached inputs.

Hybrid, per target: during warm-up every target is sampled and UNSIL trains on it; afterwards
UNSIL predicts (I^, sigma), p ~ U(0, 1), and p > sigma uses I^ (times the level's running std)
while p <= sigma samples I*, uses it and trains UNSIL on it.
"""
import contextlib
import time
from typing import Callable, NamedTuple, Optional

import torch

import shapley_kernels as sk
from ..errors import DivergenceError
from ..global_batch import local_only, pair_seed, stream_seed
from .losses import unsil_loss
from .unsil import Unsil, UnsilInputs

@contextlib.contextmanager
def inference_mode(*modules):
    """No grad and eval mode (no dropout) for ``modules``; their train/eval flags are restored."""
    flags = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in zip(modules, flags):
            m.train(flag)


def _for_engine(name: str, x: torch.Tensor) -> torch.Tensor:
    """Detached, float64 kept, anything else (bf16/fp16 under autocast) as float32.
    ``DivergenceError`` naming ``name`` where the model's features hold NaN or inf (training diverged)."""
    x = x.detach()
    if not bool(torch.isfinite(x).all()):
        raise DivergenceError(f"the label game's {name} hold NaN or inf values: the model's features diverged")
    return x if x.dtype == torch.float64 else x.float()


# ---------------------------------------------------------------- token level (Eq. 7)
def token_interactions(image_tower, text_tower, image_tokens, text_tokens, text_mask, regions, *,
                       method: str, baseline: str, num_samples: int, seed: int,
                       score="interaction"):
    """Token-level score float[P, K] (default I([R_k]), Eq. 7) of the candidate regions of P pairs.

    image_tokens float[P, N_I, D_I], text_tokens float[P, L, D_T] (the towers' ``embed_tokens``),
    text_mask bool[P, L], regions bool[P, K, N_I]; method "exact" or "sampling"; score: a
    ``shapley_kernels.region_interaction`` score ("interaction", "negative_interaction", "phi"),
    or a tuple of them: then a dict name -> float[P, K], all on the same draws.
    """
    with inference_mode(image_tower, text_tower):
        est = sk.region_interaction(image_tower, text_tower, _for_engine("image tokens", image_tokens),
                                    _for_engine("text tokens", text_tokens),
                                    regions, text_mask=text_mask, baseline=baseline, method=method,
                                    num_samples=num_samples, seed=seed, score=score)
    return {name: e.value for name, e in est.items()} if isinstance(est, dict) else est.value


def token_target_interactions(image_tower, text_tower, image_tokens, text_tokens, text_mask, regions,
                              targets: torch.Tensor, *, baseline: str, num_samples: int, seed: int,
                              method: str = "sampling", score: str = "interaction") -> torch.Tensor:
    """I([R]) float[T] of selected targets only: targets LongTensor[T, 2] of (pair, region).

    Each target becomes its own one-region pair, so the cost follows the targets asked for.
    """
    if targets.shape[0] == 0:
        return image_tokens.new_zeros(0)
    b, k = targets[:, 0], targets[:, 1]
    value = token_interactions(image_tower, text_tower, image_tokens[b], text_tokens[b], text_mask[b],
                               regions[b, k][:, None, :], method=method, baseline=baseline,
                               num_samples=num_samples, seed=seed, score=score)
    return value[:, 0]


# ---------------------------------------------------------------- semantic level (Eq. 10)
def semantic_interactions(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor, *,
                          method: str, num_samples: int, seed: int) -> torch.Tensor:
    """I([H_ij]) float[B, K, M] in game v2 of the detached A float[B, K, M]; 0 for padding and
    for captions without a phrase. method "exact", "sampling" or "auto" (exact where the pair is small,
    ``sk.region_phrase_interaction``); ``num_samples`` is unused by "exact"."""
    out = torch.zeros_like(A, dtype=A.dtype).detach()
    rows = phrase_mask.any(dim=1) & region_mask.any(dim=1)
    if bool(rows.any()):
        out[rows] = sk.region_phrase_interaction(
            _for_engine("alignment logits A", A[rows]).contiguous(), region_mask[rows], phrase_mask[rows],
            method=method, num_samples=None if method == "exact" else num_samples, seed=seed).to(A.dtype)
    return out


# ---------------------------------------------------------------- per pair, from its global row (DDP)
def _pair_tokens(image_tokens, text_tokens, text_mask, p: int):
    """Pair p's inputs as a one-pair batch with its caption's padding cut (up to its last real token)."""
    real = text_mask[p].nonzero()
    length = int(real.max()) + 1 if real.numel() else 1
    return image_tokens[p:p + 1], text_tokens[p:p + 1, :length], text_mask[p:p + 1, :length]


def token_scores_by_pair(towers, image_tokens, text_tokens, text_mask, regions, rows, seed: int, *,
                         labelled=None, targets=None, method: str = "sampling", **common) -> torch.Tensor:
    """Token-level scores of P pairs, pair by pair with pair p's own seed ``pair_seed(seed, rows[p])``
    and its caption's padding cut: a value does not depend on the other pairs of the rank's batch.

    Scores by :func:`token_interactions` (every region of a pair) or
    :func:`token_target_interactions` (some); towers (image, text); image_tokens float[P, N_I, D_I],
    text_tokens float[P, L, D_T], text_mask bool[P, L], regions bool[P, K, N_I], rows long[P] (global rows, CPU). targets None: float[P, K],
    every region. targets LongTensor[T, 2] of (pair, region) with labelled bool[P, K]: float[T];
    a pair all of whose labelled regions are asked is estimated over its candidates in one call
    (draws shared by its regions, as ``token_interactions``), otherwise only the asked regions.
    ``method="exact"`` (no draws): one call over every pair.
    """
    if method == "exact" and targets is None:
        return token_interactions(*towers, image_tokens, text_tokens, text_mask, regions, method=method, seed=seed,
                                  **common)
    P, K = regions.shape[:2]
    dtype = torch.float64 if image_tokens.dtype == torch.float64 else torch.float32
    if targets is None:
        out = torch.zeros(P, K, dtype=dtype, device=image_tokens.device)
        for p in range(P):
            one = _pair_tokens(image_tokens, text_tokens, text_mask, p)
            out[p] = token_interactions(*towers, *one, regions[p:p + 1], method=method,
                                        seed=pair_seed(seed, int(rows[p])), **common)[0].to(dtype)
        return out
    out = torch.zeros(targets.shape[0], dtype=dtype, device=image_tokens.device)
    pair, region = targets[:, 0], targets[:, 1]
    for p in pair.unique().tolist():
        mine = (pair == p).nonzero().squeeze(1)
        one = _pair_tokens(image_tokens, text_tokens, text_mask, p)
        s = pair_seed(seed, int(rows[p]))
        if mine.numel() == int(labelled[p].sum()):
            full = token_interactions(*towers, *one, regions[p:p + 1], method=method, seed=s, **common)[0]
            out[mine] = full[region[mine]].to(dtype)
        else:
            asked = torch.stack([torch.zeros_like(region[mine]), region[mine]], dim=1)
            out[mine] = token_target_interactions(*towers, *one, regions[p:p + 1], asked, seed=s, method=method,
                                                  **common).to(dtype)
    return out


def semantic_scores_by_pair(A, region_mask, phrase_mask, rows, seed: int, *, num_samples: int,
                            pairs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sampled semantic-level interactions float[B, K, M] of B pairs, pair by pair with pair b's own
    seed ``pair_seed(seed, rows[b])`` and its phrase padding cut (up to its last present phrase): a
    value does not depend on the other pairs of the rank's batch or on their phrase counts.

    Interactions by :func:`semantic_interactions`; A float[B, K, M] (detached), region_mask
    bool[B, K], phrase_mask bool[B, M], rows long[B] (global rows, CPU). pairs: long[n] the
    positions in the batch to estimate (default every pair); the other pairs' entries are 0.
    """
    out = torch.zeros_like(A).detach()
    for b in (range(A.shape[0]) if pairs is None else pairs.tolist()):
        present = phrase_mask[b].nonzero()
        M = int(present.max()) + 1 if present.numel() else 1
        out[b, :, :M] = semantic_interactions(A[b:b + 1, :, :M], region_mask[b:b + 1], phrase_mask[b:b + 1, :M],
                                              method="sampling", num_samples=num_samples,
                                              seed=pair_seed(seed, int(rows[b])))[0]
    return out


# ---------------------------------------------------------------- hybrid strategy (section 5)
def hybrid_decision(sigma: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """bool[T], True where the target must be sampled: p ~ U(0, 1) per target, p <= sigma."""
    p = torch.rand(sigma.shape, generator=generator, device=sigma.device, dtype=sigma.dtype)
    return p <= sigma.detach()


class LevelLabels(NamedTuple):
    """One level's labels for one step.

    values: float[T] raw-scale interactions used as labels; sampled: bool[T] (came from
    sampling, not from UNSIL); unsil_loss: scalar (0 with graph when nothing trained);
    logs: name -> float.
    """

    values: torch.Tensor
    sampled: torch.Tensor
    unsil_loss: torch.Tensor
    logs: dict


def hybrid_labels(level: str, unsil: Unsil, inputs: UnsilInputs,
                  sample: Callable[[torch.Tensor, int], torch.Tensor], *, warmup: bool, lam: float,
                  probe_size: int, step: int, gate: float = 0.0,
                  uniforms: Optional[torch.Tensor] = None, ranks=None) -> LevelLabels:
    """Hybrid labels of T targets at ``level`` ("token" or "semantic").

    inputs: the detached UNSIL inputs of the T targets; ``sample(index LongTensor[n], seed)``
    returns sampled raw interactions float[n] of those targets. Logs (``level`` suffix):
    unsil_share (share of labels from UNSIL), unsil_probe_error (mean |I^ - I*| in units of the
    level's running std, against fresh samples on ``probe_size`` random targets), label_time (s, sampling and UNSIL, probe excluded),
    unsil_corr (``Unsil.correlation`` of its estimates with the targets sampled before it trained
    on them) and unsil_gated (1.0 on steps where that correlation is below ``gate``: then every
    target is sampled, UNSIL answers none and keeps training; ``gate=0`` never gates).
    uniforms: float[T], each target's p of the decision (default: drawn from torch's generator).
    ranks: the ``global_batch.Ranks`` sharing the step (None: one process): UNSIL's statistics,
    gate and loss are over every rank's targets.
    """
    start = time.perf_counter()
    T = inputs.query.shape[0]
    # no target (e.g. a DDP rank without a labelled pair): UNSIL runs on a blank one and keeps none,
    # so that every rank builds the same graph and joins the same collectives (global_batch)
    estimate, sigma = unsil(inputs if T else UnsilInputs(*(x.new_zeros((1,) + x.shape[1:]) for x in inputs)))
    estimate, sigma = estimate[:T], sigma[:T]
    gated = gate > 0 and not warmup and unsil.correlation() < gate
    if warmup or gated:
        need = torch.ones(T, dtype=torch.bool, device=estimate.device)
    else:
        need = hybrid_decision(sigma) if uniforms is None else uniforms.to(sigma) <= sigma.detach()
    index = need.nonzero().squeeze(1)
    sampled = sample(index, stream_seed(step, level)).to(estimate.dtype) if index.numel() else estimate.new_zeros(0)
    # estimates made before training on them; on every rank, also one without a sampled target
    unsil.track(estimate[index] * unsil.scale(), sampled, ranks)
    unsil.observe(sampled, ranks)
    scale = unsil.scale()
    values = estimate.detach() * scale
    values[index] = sampled
    loss = unsil_loss(estimate[index], sigma[index], sampled / scale, lam, ranks)
    logs = {f"unsil_share_{level}": 1.0 - float(need.float().mean()) if T else 0.0,
            f"label_time_{level}": time.perf_counter() - start,
            f"unsil_corr_{level}": unsil.correlation(), f"unsil_gated_{level}": float(gated)}
    if probe_size > 0 and T > 0:
        # the probe's own seeded stream: probing or not never changes the global RNG; it runs on
        # logged steps and ranks with targets only, so it makes no collective call
        chooser = torch.Generator().manual_seed(stream_seed(step, f"{level}_probe"))
        probe = torch.randperm(T, generator=chooser)[:probe_size].to(estimate.device)
        with local_only(f"UNSIL's {level}-level probe"):
            fresh = sample(probe, stream_seed(step, f"{level}_probe")).to(estimate.dtype)
        logs[f"unsil_probe_error_{level}"] = float((estimate.detach()[probe] - fresh / scale).abs().mean())
    return LevelLabels(values, need, loss, logs)


def alignment_game_labels(patch_emb: torch.Tensor, phrases: torch.Tensor, phrase_mask: torch.Tensor,
                          region_masks: torch.Tensor, score):
    """Exact region scores in the alignment game of B captions: float[B, K] (a dict of them for a
    tuple ``score``).

    patch_emb float[B, N, d], phrases float[B, M, d] (L2-normalised, 0 at padding), phrase_mask
    bool[B, M], region_masks bool[B or 1, K, N]; score "phi", "excess", "shapley_iou" or a tuple of
    them (``shapley_kernels.max_game_region_values``). Each phrase j gives the maximum game
    v_j(S) = max(0, max_{p in S} cos(p, phrase_j)). "phi" and "excess" are averaged over the
    caption's phrases, i.e. the region's score in the mean game, the late-interaction similarity
    of the caption with the patches in S; "shapley_iou" takes the best phrase, how well the region
    fits one phrase's object (a mean would rank a box that half fits two objects above one that
    fits one). 0 for a caption without a phrase.
    """
    cosines = _for_engine("patch-phrase cosines", phrases @ patch_emb.transpose(1, 2))      # [B, M, N]
    names = (score,) if isinstance(score, str) else tuple(score)
    scores = sk.max_game_region_values(cosines, region_masks[:, None], score=names)       # {name: [B, M, K]}
    present = phrase_mask[..., None]
    weight = present.to(cosines.dtype)

    def over_phrases(name, value):
        if name == "shapley_iou":
            return value.masked_fill(~present, 0.0).amax(dim=1)   # IoUs are >= 0: 0 without a phrase
        return (value * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)

    out = {name: over_phrases(name, value) for name, value in scores.items()}
    return out[score] if isinstance(score, str) else out
