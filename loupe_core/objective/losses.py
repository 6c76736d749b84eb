"""LOUPE's losses: L_CMC (Eq. 1), L_TSA (Eq. 8), L_FSA (Eq. 11) and L_UNSIL (Eq. 12).

Every loss returns a finite scalar, also on degenerate input (no phrase in the batch, one
candidate, all labels tied): where nothing enters a loss it is a sum over no item, a zero
connected to the graph, so the gradient is zero.

Given ``ranks`` (``global_batch.Ranks``: W > 1 DDP processes; the trainer hands them over with
each batch), each loss is this rank's share of the loss of every rank's batch together
(``global_batch``; no loss reads torch.distributed's global state): L_CMC and the fine-grained term
score this rank's rows against every rank's (features gathered with gradients), and the means
(over images, regions, captions, UNSIL targets) are taken over every rank's items; the mean of
the shares over ranks is the loss one process gets on the concatenated batch. Every rank must
then call the same losses in the same order (they hold collectives).
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

import shapley_kernels as sk

from ..global_batch import Ranks, gather_padded, gather_with_grad, global_mean, many_ranks

TIE_EPS = 1e-6  # spec section 3: an image whose candidate labels span less than this gets weight 0


class LossOutput(NamedTuple):
    """What ``LoupeModel.forward`` returns in training mode.

    total: scalar tensor, the sum of ``terms``.
    terms: name -> scalar tensor ("cmc", "tsa", "fsa", "unsil"), each with its graph.
    logs:  name -> float, diagnostics (label sources, UNSIL error, label time in seconds).
    """

    total: torch.Tensor
    terms: dict
    logs: dict


class ContrastiveBank(NamedTuple):
    """Detached global embeddings of the whole (accumulated, all-rank) batch.

    img, txt: float[G, d] L2-normalised; offset: first row of the live micro-batch.
    """

    img: torch.Tensor
    txt: torch.Tensor
    offset: int


def _symmetric_ce(logits_i2t: torch.Tensor, logits_t2i: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))


def _with_live_rows(bank_rows: torch.Tensor, live: torch.Tensor, offset: int) -> torch.Tensor:
    """bank_rows float[G, d] with rows offset:offset+b replaced by ``live`` float[b, d] (keeps grad)."""
    b, g = live.shape[0], bank_rows.shape[0]
    if not 0 <= offset <= g - b:
        raise ValueError(f"bank.offset {offset} with a micro-batch of {b} does not fit a bank of {g} rows")
    bank_rows = bank_rows.to(live.dtype)
    return torch.cat([bank_rows[:offset], live, bank_rows[offset + b:]], dim=0)


def cmc_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
             bank: Optional[ContrastiveBank] = None, ranks: Optional[Ranks] = None) -> torch.Tensor:
    """Cross-modal contrastive loss L_CMC (spec Eq. 1): mean of both cross-entropies.

    img, txt: float[b, d] L2-normalised global embeddings of matched pairs (row i with row i).
    logit_scale: scalar tensor, 1/tau (already exponentiated and clamped).
    bank: None, or a ContrastiveBank whose rows offset:offset+b are replaced by the live
      embeddings; the loss is then the mean over the full G x G matrix.
    Without a bank and with ``ranks`` (``global_batch.Ranks``, W > 1 processes), the features of
    all ranks are gathered with gradients and this rank's rows are scored against the global
    batch, labels offset by rank (OpenCLIP's local loss): the mean over ranks is the global loss.
    Every rank must hold the same b.
    """
    if img.shape != txt.shape or img.dim() != 2:
        raise ValueError(f"img and txt must both be [b, d], got {tuple(img.shape)} and {tuple(txt.shape)}")
    if bank is not None:
        all_img = _with_live_rows(bank.img, img, bank.offset)
        all_txt = _with_live_rows(bank.txt, txt, bank.offset)
        # The scale carries gradient only in the live rows of each direction, so that the
        # micro-batches' gradients with respect to it add up to the full-batch gradient.
        live = torch.zeros(all_img.shape[0], 1, dtype=torch.bool, device=img.device)
        live[bank.offset:bank.offset + img.shape[0]] = True
        scale = torch.where(live, logit_scale, logit_scale.detach())
        sim = all_img @ all_txt.t()
        labels = torch.arange(sim.shape[0], device=img.device)
        return _symmetric_ce(scale * sim, scale * sim.t(), labels)
    if not many_ranks(ranks):
        logits = logit_scale * img @ txt.t()
        labels = torch.arange(img.shape[0], device=img.device)
        return _symmetric_ce(logits, logits.t(), labels)
    all_img, all_txt = gather_with_grad(img, ranks), gather_with_grad(txt, ranks)
    labels = torch.arange(img.shape[0], device=img.device) + ranks.rank * img.shape[0]
    return _symmetric_ce(logit_scale * img @ all_txt.t(), logit_scale * txt @ all_img.t(), labels)


def minmax_labels(interactions: torch.Tensor, valid: torch.Tensor):
    """Spec section 3 **[choice]**: min-max normalise each image's candidate interactions.

    interactions: float[B, K]; valid: bool[B, K] (candidates that carry a label).
    Returns (labels float[B, K] in [0, 1], 0 where not valid; image_weight float[B], 0 for an
    image whose valid labels span less than 1e-6 (one candidate, ties) or that has none).
    """
    big = torch.finfo(interactions.dtype).max
    hi = interactions.masked_fill(~valid, -big).amax(dim=1)
    lo = interactions.masked_fill(~valid, big).amin(dim=1)
    span = hi - lo
    weight = (valid.any(dim=1) & (span >= TIE_EPS)).to(interactions.dtype)
    safe_span = torch.where(weight > 0, span, torch.ones_like(span))
    labels = ((interactions - lo[:, None]) / safe_span[:, None]).clamp(0.0, 1.0)
    return labels.masked_fill(~valid, 0.0) * weight[:, None], weight


def tsa_loss(conf_logits: torch.Tensor, interactions: torch.Tensor, valid: torch.Tensor,
             ranks: Optional[Ranks] = None) -> torch.Tensor:
    """Token-based semantic aggregation loss L_TSA (spec Eq. 8).

    conf_logits: float[B, K] confidence logits of the candidate regions, p(R) = sigmoid(logit).
    interactions: float[B, K] token-level interactions I([R]) (constants, detached here).
    valid: bool[B, K] candidates with a label.
    Per image: -1/K_valid sum_k [I' log p + (1 - I') log(1 - p)] with I' the per-image min-max
    labels; images with tied labels get weight 0; mean over the images kept (of every rank of
    ``ranks``, ``global_batch.global_mean``).
    """
    if conf_logits.shape != interactions.shape or valid.shape != conf_logits.shape:
        raise ValueError(f"conf_logits {tuple(conf_logits.shape)}, interactions {tuple(interactions.shape)} "
                         f"and valid {tuple(valid.shape)} must have the same [B, K] shape")
    labels, weight = minmax_labels(interactions.detach().to(conf_logits.dtype), valid)
    # no early exit where nothing is kept (a zero with graph): every rank builds the same graph
    bce = F.binary_cross_entropy_with_logits(conf_logits, labels, reduction="none").masked_fill(~valid, 0.0)
    per_image = bce.sum(dim=1) / valid.sum(dim=1).clamp(min=1).to(bce.dtype)
    return global_mean((per_image * weight).sum(), weight.sum(), ranks)


def phrase_distribution(interactions: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor):
    """Spec section 4 **[choice]**: each region's interactions as a distribution over phrases.

    interactions: float[B, K, M]; region_mask bool[B, K]; phrase_mask bool[B, M].
    Returns (target float[B, K, M], rows sum to 1 where kept; keep bool[B, K]: real regions with
    at least one positive interaction with a present phrase).
    """
    present = region_mask[:, :, None] & phrase_mask[:, None, :]
    positive = interactions.clamp(min=0.0).masked_fill(~present, 0.0)
    total = positive.sum(dim=2)
    keep = total > 0
    target = positive / torch.where(keep, total, torch.ones_like(total))[:, :, None]
    return target, keep


def fsa_loss(alignment: torch.Tensor, interactions: torch.Tensor, region_mask: torch.Tensor,
             phrase_mask: torch.Tensor, ranks: Optional[Ranks] = None) -> torch.Tensor:
    """Fine-grained semantic alignment loss L_FSA (spec Eq. 11, distribution-over-phrases form).

    alignment: float[B, K, M] logits A (region-phrase cosine times its logit scale).
    interactions: float[B, K, M] semantic-level interactions (constants, detached here).
    region_mask bool[B, K], phrase_mask bool[B, M]: padding never enters.
    Loss: mean over the kept regions (of every rank of ``ranks``) of -sum_j I'_ij log softmax_{j present}(A_i)_j.
    """
    if alignment.shape != interactions.shape or alignment.dim() != 3:
        raise ValueError(f"alignment {tuple(alignment.shape)} and interactions {tuple(interactions.shape)} "
                         "must have the same [B, K, M] shape")
    target, keep = phrase_distribution(interactions.detach().to(alignment.dtype), region_mask, phrase_mask)
    absent = ~phrase_mask[:, None, :].expand_as(alignment)
    log_probs = alignment.masked_fill(absent, float("-inf")).log_softmax(dim=2)
    log_probs = log_probs.masked_fill(absent | ~keep[:, :, None], 0.0)
    per_region = -(target * log_probs).sum(dim=2)
    return global_mean(per_region[keep].sum(), keep.sum(), ranks)


SIGMA_ERROR_CAP = 0.9  # sigma's gradient sees |I^ - I*| capped here (see unsil_loss)


def unsil_loss(estimate: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor,
               lam: float = 1.0, ranks: Optional[Ranks] = None) -> torch.Tensor:
    """UNSIL loss (spec Eq. 12 **[choice]** form), mean over targets of (I^ - I*)^2 / sigma + lam * sigma
    (over the targets of every rank of ``ranks``).

    estimate, sigma, target: float[T] (target detached here; sigma in (0, 1)). For a fixed
    error e the optimum is sigma = |e| / sqrt(lam). No target: a zero connected to the graph.

    The value is always Eq. 12 and so is the estimate's gradient, 2 e / sigma. Sigma's gradient,
    lam - e^2 / sigma^2, uses e capped at ``SIGMA_ERROR_CAP * sqrt(lam)``: with the raw error,
    every target with |e| > sqrt(lam) pushes a sigmoid sigma towards 1, where the sigmoid
    saturates and no later small error can bring it back (seen in training: sigma stuck at 1,
    every label sampled, UNSIL unused, while its probe error had fallen to 0.1). Capped, sigma's
    optimum is min(|e|, 0.9) / sqrt(lam) and a saturated sigma always gets a push back.
    """
    if estimate.shape != sigma.shape or estimate.shape != target.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)}, sigma {tuple(sigma.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")
    square = (estimate - target.detach().to(estimate.dtype)).square()
    capped = square.detach().clamp(max=SIGMA_ERROR_CAP ** 2 * lam)
    fixed_sigma = sigma.detach()
    # value: square / sigma (the two capped terms cancel); gradients as in the docstring
    per_target = square / fixed_sigma + capped / sigma - capped / fixed_sigma + lam * sigma
    return global_mean(per_target.sum(), estimate.numel(), ranks)


def late_interaction_similarity(queries: torch.Tensor, query_mask: torch.Tensor,
                                patches: torch.Tensor) -> torch.Tensor:
    """Token-wise late-interaction similarity (FILIP's text side; PACL-style phrase-to-patch).

    queries float[Bt, Q, d] (caption word tokens or phrase embeddings, L2-normalised),
    query_mask bool[Bt, Q], patches float[Bi, P, d] (L2-normalised final patch embeddings).
    Returns s float[Bt, Bi]: for text t and image i, the mean over t's present queries of each
    query's best cosine with a patch of i (0 for a text without a present query). Computed by the
    engine's fused op (``shapley_kernels.late_interaction``: O(Bt Bi Q) memory, the gradient of a
    tied max to its lowest-index patch); float64 in, float64 out, float32 otherwise.
    """
    if queries.shape[1] == 0:  # no query slot in the batch: every similarity 0, connected to the graph
        return (queries.sum() + patches.sum()) * queries.new_zeros(queries.shape[0], patches.shape[0])
    return sk.late_interaction(queries, query_mask, patches)


def fine_contrastive_loss(queries: torch.Tensor, query_mask: torch.Tensor, patches: torch.Tensor,
                          logit_scale: torch.Tensor, ranks: Optional[Ranks] = None) -> torch.Tensor:
    """Cross-image fine-grained contrastive loss (project choice, docs/fine_grained_alignment.md).

    The late-interaction similarity s(T_t, I_i) of ``late_interaction_similarity`` times
    ``logit_scale`` scored like L_CMC: each caption against the batch's images and each image
    against the batch's captions (matched pairs on the diagonal). Captions without a present
    query are left out of both directions. Shapes as in ``late_interaction_similarity`` with
    Bt = Bi = b. With ``ranks`` (W > 1 processes) the batch is every rank's (as FILIP and
    L_CMC: queries, masks and patches gathered with gradients, queries padded to the longest
    rank's), this rank scoring its own captions and images; every rank must hold the same b.
    """
    if queries.shape[0] != patches.shape[0]:
        raise ValueError(f"queries and patches must hold the same pairs, got {queries.shape[0]} and "
                         f"{patches.shape[0]}")
    b = patches.shape[0]
    all_queries, all_mask, first = gather_padded(queries, query_mask, ranks)
    all_patches = gather_with_grad(patches, ranks)
    has_query = query_mask.any(dim=1)  # sums over no caption are 0 with graph: no early exit, same graph on every rank
    has_all = all_mask.any(dim=1)                                                               # [G]
    own = torch.arange(b, device=patches.device) + first                     # this rank's rows of G
    t2i_logits = logit_scale * late_interaction_similarity(queries, query_mask, all_patches)     # [b, G]
    i2t_logits = (t2i_logits.t() if not many_ranks(ranks)                                    # [b, G]
                  else logit_scale * late_interaction_similarity(all_queries, all_mask, patches).t())
    column = has_all.cumsum(0) - 1  # each caption's place among the captions with a query
    t2i = F.cross_entropy(t2i_logits[has_query], own[has_query], reduction="sum")
    i2t = F.cross_entropy(i2t_logits[has_query][:, has_all], column[own[has_query]], reduction="sum")
    return global_mean(0.5 * (t2i + i2t), has_query.sum(), ranks)


def pacl_similarity(text: torch.Tensor, patches: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """PACL's patch-level compatibility (Mukhoti et al. 2023) of every text with every image.

    text float[Bt, d] (text [CLS] embeddings, L2-normalised), patches float[Bi, P, d] (final
    patch embeddings, L2-normalised), logit_scale scalar (the softmax's inverse temperature).
    For text t and image i the patches are pooled with weights softmax_p(logit_scale x
    cos(patch_ip, t)); returns float[Bt, Bi], the cosine of that pooled embedding with t.
    """
    cos = torch.einsum("td,ipd->tip", text, patches)                           # [Bt, Bi, P]
    weights = torch.softmax(logit_scale * cos, dim=2)
    pooled = F.normalize(torch.einsum("tip,ipd->tid", weights, patches), dim=-1)   # [Bt, Bi, d]
    return (pooled * text[:, None, :]).sum(dim=-1)


def pacl_loss(text: torch.Tensor, patches: torch.Tensor, logit_scale: torch.Tensor,
              ranks: Optional[Ranks] = None) -> torch.Tensor:
    """PACL's contrastive loss: ``pacl_similarity`` times ``logit_scale`` scored like L_CMC (each
    caption against the batch's images and each image against the batch's captions, matched
    pairs on the diagonal). Shapes as in ``pacl_similarity`` with Bt = Bi = b. With ``ranks``
    (W > 1 processes) the batch is every rank's (texts and patches gathered with
    gradients), this rank scoring its own captions and images; every rank must hold the same b.
    """
    if text.shape[0] != patches.shape[0]:
        raise ValueError(f"text and patches must hold the same pairs, got {text.shape[0]} and {patches.shape[0]}")
    b = patches.shape[0]
    if not many_ranks(ranks):
        logits = logit_scale * pacl_similarity(text, patches, logit_scale)          # [b, b]
        return _symmetric_ce(logits, logits.t(), torch.arange(b, device=patches.device))
    all_text, all_patches = gather_with_grad(text, ranks), gather_with_grad(patches, ranks)
    t2i = logit_scale * pacl_similarity(text, all_patches, logit_scale)               # [b, G]
    i2t = logit_scale * pacl_similarity(all_text, patches, logit_scale).t()           # [b, G]
    return _symmetric_ce(t2i, i2t, torch.arange(b, device=patches.device) + ranks.rank * b)


def simclr_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float,
                ranks: Optional[Ranks] = None) -> torch.Tensor:
    """SimCLR's NT-Xent loss (SLIP's self-supervised term) of two views of the same images.

    view_a, view_b float[b, d] (L2-normalised projections of the two views; row i of each is
    image i). Each of the 2b views is classified among the other 2b - 1 by cosine / temperature,
    its positive being the other view of its image; mean over the 2b views. With ``ranks`` (W > 1
    processes) the candidates are every rank's views (gathered with
    gradients), this rank scoring its own; every rank must hold the same b.
    """
    if view_a.shape != view_b.shape or view_a.dim() != 2:
        raise ValueError(f"view_a and view_b must both be [b, d], got {tuple(view_a.shape)} and {tuple(view_b.shape)}")
    b = view_a.shape[0]
    rank = 0 if ranks is None else ranks.rank
    mine = torch.cat([view_a, view_b])                                           # [2b, d]
    every = torch.cat([gather_with_grad(view_a, ranks), gather_with_grad(view_b, ranks)])
    G = every.shape[0] // 2
    own = torch.arange(b, device=view_a.device) + rank * b
    rows = torch.cat([own, own + G])                                             # my views among every's
    logits = mine @ every.t() / temperature                                      # [2b, 2G]
    logits = logits.masked_fill(F.one_hot(rows, 2 * G).bool(), float("-inf"))   # not itself
    positive = torch.cat([own + G, own])
    return F.cross_entropy(logits, positive)

