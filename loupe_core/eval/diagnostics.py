"""Alignment diagnostics: why a LOUPE model grounds, or why not (``loupe eval --task diagnostics``).

Scored on a grounding split (``GroundingSplit``: one ref per object, so the *objects* of an image
are the distinct boxes of all its expressions; each expression refers to one of them). Boxes
are xyxy model-input pixels; a *hit* is IoU >= 0.5. Keys of :func:`evaluate_diagnostics`
(``evaluate`` prefixes them with ``diagnostics/``); percentages are 0-100, AUCs and
correlations as they are.

1. True-box grounding (alignment with perfect proposals). For each expression the candidates
   are the true boxes of all objects of its image; a box's embedding is the L2-normalised mean
   of the final patch embeddings whose cell centres lie in the box (``region_head.cells_in_boxes``;
   a box holding no centre takes the cell that contains its centre); the candidate of highest
   cosine with the query is picked (the first on ties).
   ``diag_truebox_cls``: percent of expressions whose referred object is picked, query = the
   expression's [CLS] embedding; ``diag_truebox_phrase``: the same with the embedding of its
   first noun phrase (as ``encode.encode_phrase_list``); ``diag_truebox_chance``: 100 x the mean
   over expressions of 1 / (objects in its image).
2. Proposal recall, over every object of every image.
   ``diag_recall@K`` (K = 4, 16, 64): percent of objects hit by one of the region head's top-K
   candidates after NMS (``model.propose_regions``: the model's ``nms_iou``).
   ``diag_recall_random@K``: the same, expected for a uniformly random ranking of all P
   candidates without NMS: an object hit by m candidates is found with probability
   1 - C(P - m, K) / C(P, K), computed exactly. ``diag_recall_oracle``: percent of objects hit
   by any candidate (the ceiling for every K); ``diag_recall_oracle_strict``: the same at
   IoU >= 0.7 (``grounding.STRICT_IOU_THRESHOLD``).
3. Token-level labels (the L_TSA targets) of object and background regions, on
   ``num_label_images`` images drawn with ``seed``. Per image the text is its first expression.
   Candidates: the head's candidates whose region holds >= 2 cells of the token grid (Eq. 7 is
   0 for one cell whatever the model does), one per distinct box; of these up to 4 "object"
   candidates (a hit on some object of the image, highest IoU first) and up to 4 "background"
   candidates (no overlap at all with any object box, drawn uniformly with the seeded
   generator). Labels: ``labels.token_interactions``, method "sampling" with the model's
   ``loss_config.token_baseline`` and ``token_num_samples``, scores "interaction",
   "negative_interaction" and "phi" on the same draws.
   ``diag_label_auc``: ROC AUC (``sklearn.metrics.roc_auc_score``; object = positive; the
   candidates of all sampled images pooled) of the model's ``token_target`` score;
   ``diag_label_auc_interaction`` / ``_negative_interaction`` / ``_phi``: of each score (the
   second is 1 minus the first up to ties: the same draws, negated); ``diag_label_corr``:
   Pearson correlation, over the same pooled candidates, of the ``token_target`` labels with an
   independent estimate (another seed) at 4 x ``token_num_samples``. AUC keys are left out when
   the sample holds one class only, correlations when either side is constant.
3b. The alignment-game labels (``token_game="alignment"``, exact) on every expression: the
   mean over the expression's noun phrases of each candidate's score in the phrase's maximum
   game over the patches (``objective.labels.alignment_game_labels``; the best phrase for
   "shapley_iou"). ``diag_label_auc_alignment_phi`` / ``_excess`` / ``_shapley_iou``: ROC AUC of candidates that hit the referred object (IoU >= 0.5) against
   candidates that touch no object. For a model trained on the alignment game,
   ``diag_label_auc`` is the AUC of its ``token_target`` here (part 3 then checks Eq. 7, and
   ``diag_label_corr`` is Eq. 7's: the alignment labels are exact).
4. UNSIL, for the levels the objective has (``objective.unsil``): Pearson correlation of UNSIL's label
   (its estimate x its running scale, the value ``labels.hybrid_labels`` uses) with the best
   target at hand on the same inputs. ``diag_unsil_corr_token``: against part 3's 4x-samples
   estimate, on part 3's candidates (UNSIL inputs as in training, ``objective.label_sources.token_unsil_inputs``);
   ``diag_unsil_corr_semantic``: against part 5's exact labels, on every (object, phrase) pair of
   part 5's expressions (``objective.label_sources.semantic_unsil_inputs``, the objects as the regions).
5. Semantic labels (Eq. 10) with perfect regions, on the expressions of the sampled images that
   hold at least two noun phrases (ShapesWorld's relational expressions, "the red circle above
   the blue star"; with one phrase the metric is trivially right). This keeps each expression's
   own phrases rather than the image's retrieval caption: the caption has no referred object,
   and the retrieval file is another split (on real data, other images). Regions: the true
   object boxes of the image (embeddings as in 1); phrases: the expression's noun phrases
   (``encode.encode_text_views``, the data pipeline's chunker); A = ``alignment_scale()`` x
   region-phrase cosines; labels = ``labels.semantic_interactions``, "exact" (sampling with
   ``semantic_num_samples`` only past ``shapley_kernels.alignment.EXACT_LIMIT`` players).
   ``diag_semantic_gold``: percent of those expressions whose referred object's row of labels is
   largest at the first noun phrase (the first on ties); ``diag_semantic_chance``: 100 x the mean
   of 1 / (phrases) over them. Both are left out when no expression has two phrases.

Cost: parts 1, 2 and 5 are cheap; part 3 samples 5 x ``token_num_samples`` x (cells + 2) image
tower evaluations per candidate (one estimate plus the 4x reference), about 90 GFLOP per image
for the default model: 3.5-5 s per image on this project's shared 2-core CPU machine, hence the
default of ``NUM_LABEL_IMAGES`` = 4 images (32 candidates; pass more where compute allows).

Tensor-level functions (``image_objects``, ``box_cells``, ``box_embeddings``,
``truebox_accuracy``, ``chance_level``, ``object_hits``, ``proposal_recall``, ``random_recall``,
``oracle_recall``, ``roc_auc``, ``pearson``, ``label_candidates``, ``gold_phrase_accuracy``) take
plain tensors; the model level is :func:`evaluate_diagnostics`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from shapley_kernels.alignment import EXACT_LIMIT
from shapley_kernels.checks import check_count, check_finite, check_tensor

from ..global_batch import SEED_STRIDE
from ..objective import labels as lab
from ..model.loupe import masked_mean_embedding
from ..objective.label_sources import semantic_unsil_inputs, token_unsil_inputs
from ..model.region_head import box_iou, cells_in_boxes
from .encode import batches, encode_text_views, evaluating, image_tensor, tokenize
from .grounding import IOU_THRESHOLD, STRICT_IOU_THRESHOLD, paired_box_iou

RECALL_KS = (4, 16, 64)
LABEL_SCORES = ("interaction", "negative_interaction", "phi")
OBJECT_CANDIDATES = 4
BACKGROUND_CANDIDATES = 4
MIN_REGION_CELLS = 2
REFERENCE_FACTOR = 4
NUM_LABEL_IMAGES = 4


def _check_boxes(name: str, boxes: torch.Tensor, dims: int) -> None:
    check_tensor(name, boxes, dims=dims, dtype_kind="float")
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name} must end in 4 (xyxy), got shape {list(boxes.shape)}")
    check_finite(name, boxes)


def _check_mask(name: str, mask: torch.Tensor, shape) -> None:
    check_tensor(name, mask, dtype_kind="bool")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(mask.shape)}")


# ---------------------------------------------------------------- objects of a grounding split
def image_objects(expression_image: Sequence[int], boxes, num_images: int):
    """The objects of each image of a grounding split: the distinct boxes of its expressions.

    expression_image: R image indices; boxes float[R, 4] (numpy or tensor). Returns (object boxes
    float[N, n, 4] padded with zeros, object_mask bool[N, n], expression_object LongTensor[R]: the
    referred object's index within its image), objects in order of first mention.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    owner = [int(i) for i in expression_image]
    if len(owner) != boxes.shape[0]:
        raise ValueError(f"expression_image must have one entry per box ({boxes.shape[0]}), got {len(owner)}")
    if any(not 0 <= i < num_images for i in owner):
        raise ValueError(f"expression_image must index the {num_images} images")
    objects = [[] for _ in range(num_images)]
    index = []
    for i, box in zip(owner, boxes.tolist()):
        key = tuple(box)
        if key not in objects[i]:
            objects[i].append(key)
        index.append(objects[i].index(key))
    n = max([1] + [len(o) for o in objects])
    out = torch.zeros(num_images, n, 4)
    mask = torch.zeros(num_images, n, dtype=torch.bool)
    for i, obj in enumerate(objects):
        if obj:
            out[i, : len(obj)] = torch.tensor(obj)
            mask[i, : len(obj)] = True
    return out, mask, torch.tensor(index, dtype=torch.long)


# ---------------------------------------------------------------- 1. true-box grounding
def box_cells(boxes: torch.Tensor, grid, cell: float) -> torch.Tensor:
    """bool[..., gh * gw]: the cells whose centres lie in each box float[..., 4]
    (``cells_in_boxes``); a box holding no centre gets the cell that contains its centre."""
    _check_boxes("boxes", boxes, dims=None)
    gh, gw = grid
    inside = cells_in_boxes(boxes, grid, cell)
    cx = ((boxes[..., 0] + boxes[..., 2]) / (2 * cell)).floor().long().clamp(0, gw - 1)
    cy = ((boxes[..., 1] + boxes[..., 3]) / (2 * cell)).floor().long().clamp(0, gh - 1)
    centre = F.one_hot(cy * gw + cx, gh * gw).bool()
    return torch.where(inside.any(dim=-1, keepdim=True), inside, centre)


def box_embeddings(patch_emb: torch.Tensor, boxes: torch.Tensor, grid, cell: float) -> torch.Tensor:
    """float[B, n, d]: L2-normalised mean of patch_emb float[B, gh * gw, d] over each box's
    ``box_cells``; boxes float[B, n, 4]."""
    check_tensor("patch_emb", patch_emb, dims=3, dtype_kind="float")
    _check_boxes("boxes", boxes, dims=3)
    if boxes.shape[0] != patch_emb.shape[0] or patch_emb.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"patch_emb must be float[{boxes.shape[0]}, {grid[0] * grid[1]}, d], "
                         f"got {list(patch_emb.shape)}")
    return masked_mean_embedding(box_cells(boxes, grid, cell), patch_emb)


def truebox_accuracy(box_emb: torch.Tensor, box_mask: torch.Tensor, query: torch.Tensor,
                     target: torch.Tensor) -> float:
    """Percent of rows whose highest-cosine present box is the target (first on ties).

    box_emb float[R, n, d] (unit rows), box_mask bool[R, n] (present boxes), query float[R, d],
    target LongTensor[R] (a present box of each row).
    """
    check_tensor("box_emb", box_emb, dims=3, dtype_kind="float")
    R, n, d = box_emb.shape
    if R == 0:
        raise ValueError("box_emb must hold at least one row")
    _check_mask("box_mask", box_mask, (R, n))
    check_tensor("query", query, dims=2, dtype_kind="float")
    if tuple(query.shape) != (R, d):
        raise ValueError(f"query must have shape [{R}, {d}], got {list(query.shape)}")
    check_tensor("target", target, dims=1, dtype_kind="int")
    if target.shape[0] != R or bool(((target < 0) | (target >= n)).any()) \
            or not bool(box_mask[torch.arange(R), target.clamp(0, n - 1)].all()):
        raise ValueError(f"target must give a present box (box_mask True) of each of the {R} rows")
    cosine = (box_emb @ query[:, :, None]).squeeze(2).masked_fill(~box_mask, -math.inf)
    return 100.0 * float((cosine.argmax(dim=1) == target).double().mean())


def chance_level(present: torch.Tensor) -> float:
    """100 x mean over rows of 1 / (present entries): present bool[R, n], each row non-empty."""
    check_tensor("present", present, dims=2, dtype_kind="bool")
    counts = present.sum(dim=1)
    if present.shape[0] == 0 or bool((counts == 0).any()):
        raise ValueError("present must hold at least one row, each with a present entry")
    return 100.0 * float((1.0 / counts.double()).mean())


# ---------------------------------------------------------------- 2. proposal recall
def object_hits(boxes: torch.Tensor, object_boxes: torch.Tensor, object_mask: torch.Tensor,
                iou_threshold: float = IOU_THRESHOLD) -> torch.Tensor:
    """bool[B, P, n]: box p of image b has IoU >= ``iou_threshold`` with its present object o.

    boxes float[B, P, 4] or float[P, 4] (the same candidates for every image); object_boxes
    float[B, n, 4], object_mask bool[B, n].
    """
    _check_boxes("object_boxes", object_boxes, dims=3)
    B, n, _ = object_boxes.shape
    _check_mask("object_mask", object_mask, (B, n))
    _check_boxes("boxes", boxes, dims=None)
    if boxes.dim() not in (2, 3):
        raise ValueError(f"boxes must be float[P, 4] or float[B, P, 4], got shape {list(boxes.shape)}")
    if boxes.dim() == 2:
        boxes = boxes.expand(B, *boxes.shape)
    if boxes.shape[0] != B:
        raise ValueError(f"boxes must hold B={B} images like object_boxes, got {boxes.shape[0]}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    P = boxes.shape[1]
    iou = paired_box_iou(boxes[:, :, None, :].expand(B, P, n, 4).double(),
                         object_boxes[:, None, :, :].expand(B, P, n, 4).double())
    return (iou >= iou_threshold) & object_mask[:, None, :]


def _check_ks(ks) -> tuple:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must hold at least one K")
    for k in ks:
        check_count("ks", k, 1)
    return ks


def _percent_of_objects(found: torch.Tensor, object_mask: torch.Tensor) -> float:
    total = int(object_mask.sum())
    if total == 0:
        raise ValueError("object_mask must mark at least one object")
    return 100.0 * float((found.double() * object_mask).sum()) / total


def proposal_recall(ranked_boxes: torch.Tensor, object_boxes: torch.Tensor, object_mask: torch.Tensor,
                    ks: Sequence[int] = RECALL_KS, iou_threshold: float = IOU_THRESHOLD) -> dict:
    """{K: percent of present objects hit by one of the first K boxes} (K beyond the list: all).

    ranked_boxes float[B, K', 4] best first; object_boxes float[B, n, 4]; object_mask bool[B, n].
    """
    _check_boxes("ranked_boxes", ranked_boxes, dims=3)
    ks = _check_ks(ks)
    hits = object_hits(ranked_boxes, object_boxes, object_mask, iou_threshold)
    return {k: _percent_of_objects(hits[:, :k].any(dim=1), object_mask) for k in ks}


def random_recall(candidate_boxes: torch.Tensor, object_boxes: torch.Tensor, object_mask: torch.Tensor,
                  ks: Sequence[int] = RECALL_KS, iou_threshold: float = IOU_THRESHOLD) -> dict:
    """{K: expected percent of objects hit by K of the P candidates drawn without replacement}.

    candidate_boxes float[P, 4] or float[B, P, 4]; an object hit by m candidates is found with
    probability 1 - C(P - m, K) / C(P, K) (K > P: all P candidates), computed exactly.
    """
    ks = _check_ks(ks)
    hits = object_hits(candidate_boxes, object_boxes, object_mask, iou_threshold)
    P = hits.shape[1]
    if P == 0:
        raise ValueError("candidate_boxes must hold at least one candidate")
    m = hits.sum(dim=1)
    out = {}
    for k in ks:
        draws = min(k, P)
        total = math.comb(P, draws)
        found = torch.tensor([1.0 - math.comb(P - j, draws) / total for j in range(P + 1)], dtype=torch.float64)
        out[k] = _percent_of_objects(found[m], object_mask)
    return out


def oracle_recall(candidate_boxes: torch.Tensor, object_boxes: torch.Tensor, object_mask: torch.Tensor,
                  iou_threshold: float = IOU_THRESHOLD) -> float:
    """Percent of present objects hit by any candidate (candidate_boxes float[P, 4] or [B, P, 4])."""
    hits = object_hits(candidate_boxes, object_boxes, object_mask, iou_threshold)
    return _percent_of_objects(hits.any(dim=1), object_mask)


# ---------------------------------------------------------------- 3.-4. token labels, UNSIL
def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> Optional[float]:
    """ROC AUC of scores float[T] for positive bool[T] (ties count half); None with one class only."""
    from sklearn.metrics import roc_auc_score

    check_tensor("scores", scores, dims=1, dtype_kind="float")
    check_finite("scores", scores)
    _check_mask("positive", positive, scores.shape)
    if bool(positive.all()) or not bool(positive.any()):
        return None
    return float(roc_auc_score(positive.cpu().numpy(), scores.detach().double().cpu().numpy()))


def pearson(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    """Pearson correlation of a float[T] and b float[T]; None when T < 2 or either is constant."""
    check_tensor("a", a, dims=1, dtype_kind="float")
    check_tensor("b", b, dims=1, dtype_kind="float")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length, got {a.shape[0]} and {b.shape[0]}")
    check_finite("a", a)
    check_finite("b", b)
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.numel() < 2:
        return None
    a, b = a - a.mean(), b - b.mean()
    norm = float(a.norm() * b.norm())
    if norm <= 1e-12 * max(1.0, float(a.abs().max() * b.abs().max())) * a.numel():
        return None
    return float(a @ b) / norm


def label_candidates(candidate_boxes: torch.Tensor, region_cells: torch.Tensor, object_boxes: torch.Tensor, *,
                     generator: torch.Generator, max_object: int = OBJECT_CANDIDATES,
                     max_background: int = BACKGROUND_CANDIDATES, min_cells: int = MIN_REGION_CELLS,
                     iou_threshold: float = IOU_THRESHOLD):
    """The candidates one image's labels are checked on: (index LongTensor[k], is_object bool[k]).

    candidate_boxes float[P, 4]; region_cells LongTensor[P] (players of each candidate's region;
    fewer than ``min_cells``: never chosen; of candidates with the same box only the first is
    eligible); object_boxes float[n, 4] (the image's objects). Objects first: up to
    ``max_object`` candidates of IoU >= ``iou_threshold`` with some object, highest IoU first
    (lowest index on ties); then up to ``max_background`` candidates whose box overlaps no
    object box (zero intersection), drawn uniformly with ``generator``.
    """
    _check_boxes("candidate_boxes", candidate_boxes, dims=2)
    _check_boxes("object_boxes", object_boxes, dims=2)
    P = candidate_boxes.shape[0]
    check_tensor("region_cells", region_cells, dims=1, dtype_kind="int")
    if region_cells.shape[0] != P:
        raise ValueError(f"region_cells must have one entry per candidate ({P}), got {region_cells.shape[0]}")
    check_count("max_object", max_object, 0)
    check_count("max_background", max_background, 0)
    check_count("min_cells", min_cells, 1)
    boxes, objects = candidate_boxes.detach().double().cpu(), object_boxes.detach().double().cpu()
    _, group = torch.unique(boxes, dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1 if P else 0,), P, dtype=torch.long).scatter_reduce(
        0, group, torch.arange(P), reduce="amin")
    eligible = torch.zeros(P, dtype=torch.bool)
    eligible[first] = True  # one candidate per distinct box (clipped anchors can coincide)
    eligible &= region_cells.cpu() >= min_cells
    if objects.shape[0]:
        iou = box_iou(boxes, objects)
        best = iou.max(dim=1).values
        clear = (iou <= 0).all(dim=1)
    else:
        best, clear = torch.zeros(P, dtype=torch.float64), torch.ones(P, dtype=torch.bool)
    on_object = (eligible & (best >= iou_threshold)).nonzero().squeeze(1)
    on_object = on_object[torch.argsort(-best[on_object], stable=True)][:max_object]
    background = (eligible & clear).nonzero().squeeze(1)
    background = background[torch.randperm(background.numel(), generator=generator)[:max_background]]
    index = torch.cat([on_object, background])
    is_object = torch.cat([torch.ones(on_object.numel(), dtype=torch.bool),
                           torch.zeros(background.numel(), dtype=torch.bool)])
    return index, is_object


# ---------------------------------------------------------------- 5. semantic gold phrase
def gold_phrase_accuracy(labels: torch.Tensor, target: torch.Tensor, phrase_mask: torch.Tensor) -> float:
    """Percent of rows whose target region's labels are largest at phrase 0 (first on ties).

    labels float[R, K, M] (region x phrase), target LongTensor[R] (the referred region),
    phrase_mask bool[R, M] (present phrases; phrase 0 present in every row).
    """
    check_tensor("labels", labels, dims=3, dtype_kind="float")
    check_finite("labels", labels)
    R, K, M = labels.shape
    if R == 0:
        raise ValueError("labels must hold at least one row")
    _check_mask("phrase_mask", phrase_mask, (R, M))
    if not bool(phrase_mask[:, 0].all()):
        raise ValueError("phrase_mask must mark phrase 0 present in every row")
    check_tensor("target", target, dims=1, dtype_kind="int")
    if target.shape[0] != R or bool(((target < 0) | (target >= K)).any()):
        raise ValueError(f"target must give a region index in [0, {K}) for each of the {R} rows")
    row = labels[torch.arange(R), target].masked_fill(~phrase_mask, -math.inf)
    return 100.0 * float((row.argmax(dim=1) == 0).double().mean())


# ---------------------------------------------------------------- model level
def _image_features(model, images, *, top_k: int, device, batch_size, progress):
    """One encoding pass: (global float[N, d], patch float[N, N_I, d], the head's top_k boxes after
    NMS float[N, top_k, 4] (``model.propose_regions``), all on the CPU; grid, cell size)."""
    glob, patch, ranked = [], [], []
    with evaluating(model):
        for sl in batches(len(images), batch_size, progress=progress, desc="diagnostic images"):
            feats = model.encode_images(image_tensor(images[sl], device))
            glob.append(feats.global_emb.float().cpu())
            patch.append(feats.patch_emb.float().cpu())
            ranked.append(model.propose_regions(feats, top_k).boxes.float().cpu())
    if not glob:
        raise ValueError("split must hold at least one image")
    return torch.cat(glob), torch.cat(patch), torch.cat(ranked), tuple(feats.grid), float(feats.patch_size)


def _put(out: dict, key: str, value) -> None:
    """out[key] = value, unless value is None (a metric that is undefined on this sample)."""
    if value is not None:
        out[key] = float(value)


def _on(inputs, module: torch.nn.Module):
    """UnsilInputs moved to ``module``'s device, float fields in its dtype."""
    param = next(module.parameters())
    return type(inputs)._make(t.to(param.device, param.dtype) if t.is_floating_point() else t.to(param.device)
                              for t in inputs)


def _token_label_metrics(objective, tokenizer, images, texts, object_boxes, object_mask, geometry, *, device,
                         seed: int, generator: torch.Generator) -> dict:
    """Parts 3 and 4 (token level): images uint8 [B, S, S, 3] with one text each, object_boxes
    float[B, n, 4] / object_mask bool[B, n] their objects, geometry the head's candidates (CPU)."""
    model, lcfg = objective.model, objective.loss_config
    # the encoder game's own target; an alignment-game model is checked on Eq. 7 here (part 3b: its own)
    encoder_target = lcfg.token_target if lcfg.token_game == "encoder" else "interaction"
    region_cells = model.token_masks(geometry.boxes, geometry.masks).sum(dim=1)
    chosen = [label_candidates(geometry.boxes, region_cells, object_boxes[b][object_mask[b]], generator=generator)
              for b in range(len(texts))]
    keep = [b for b, (index, _) in enumerate(chosen) if index.numel()]
    if not keep:
        return {}
    width = max(chosen[b][0].numel() for b in keep)
    index = torch.zeros(len(keep), width, dtype=torch.long)
    valid = torch.zeros(len(keep), width, dtype=torch.bool)
    is_object = torch.zeros(len(keep), width, dtype=torch.bool)
    for row, b in enumerate(keep):  # padding repeats the image's first candidate; its labels are never read
        idx, obj = chosen[b]
        index[row] = torch.cat([idx, idx[:1].expand(width - idx.numel())])
        valid[row, : idx.numel()] = True
        is_object[row, : idx.numel()] = obj
    pair, region = valid.nonzero().unbind(1)
    towers = (model.image_tower, model.text_tower)
    common = dict(method="sampling", baseline=lcfg.token_baseline)
    with evaluating(model):
        image_tokens, img = model.encode_image_tokens(image_tensor(images[keep], device))
        ids, text_mask = tokenize(tokenizer, [texts[b] for b in keep], model.config.text_max_tokens)
        ids, text_mask = ids.to(device), text_mask.to(device)
        text_tokens, txt = model.encode_text_tokens(ids, text_mask)
        final_masks = geometry.masks[index].to(device)
        token_masks = model.token_masks(geometry.boxes[index].to(device), final_masks)
        scores = lab.token_interactions(*towers, image_tokens, text_tokens, text_mask, token_masks,
                                        num_samples=lcfg.token_num_samples, seed=seed, score=LABEL_SCORES, **common)
        reference = lab.token_interactions(*towers, image_tokens, text_tokens, text_mask, token_masks,
                                           num_samples=REFERENCE_FACTOR * lcfg.token_num_samples,
                                           seed=seed + SEED_STRIDE, score=encoder_target, **common)
        unsil_label = None
        if "token" in objective.unsil:
            unsil = objective.unsil["token"]
            inputs = token_unsil_inputs(img.patch_emb, txt.token_emb, text_mask, pair.to(device),
                                        final_masks[pair.to(device), region.to(device)])
            estimate, _ = unsil(inputs)
            unsil_label = estimate.double().cpu() * unsil.scale()
    scores = {name: value.double().cpu()[valid] for name, value in scores.items()}
    reference = reference.double().cpu()[valid]
    positive = is_object[valid]
    out = {}
    if lcfg.token_game == "encoder":
        _put(out, "diag_label_auc", roc_auc(scores[lcfg.token_target], positive))
    for name in LABEL_SCORES:
        _put(out, f"diag_label_auc_{name}", roc_auc(scores[name], positive))
    _put(out, "diag_label_corr", pearson(scores[encoder_target], reference))
    if unsil_label is not None:
        _put(out, "diag_unsil_corr_token", pearson(unsil_label, reference))
    return out


def _alignment_label_metrics(patch_emb, text, owner, expression_object, objects, object_mask, geometry) -> dict:
    """Part 3b: AUC of the alignment-game labels on every expression (cheap: exact, closed form)."""
    with_phrase = text.phrase_mask.any(dim=1).nonzero().squeeze(1)
    if with_phrase.numel() == 0:
        return {}
    image = owner[with_phrase]
    scores = lab.alignment_game_labels(patch_emb[image].double(), text.phrases[with_phrase].double(),
                                   text.phrase_mask[with_phrase], geometry.masks[None], ("phi", "excess", "shapley_iou"))
    hits = object_hits(geometry.boxes, objects[image], object_mask[image])                 # [R, P, n]
    referred = hits[torch.arange(image.numel()), :, expression_object[with_phrase]]       # [R, P]
    inter = box_iou(geometry.boxes, objects[image].reshape(-1, 4)).reshape(-1, image.numel(), objects.shape[1])
    touches = ((inter > 0) & object_mask[image][None]).any(dim=2).t()                     # [R, P]
    keep = referred | ~touches
    out = {}
    for name, value in scores.items():
        _put(out, f"diag_label_auc_alignment_{name}", roc_auc(value[keep].float(), referred[keep]))
    return out


def _semantic_label_metrics(objective, text, rows, owner, expression_object, img_global, box_emb, object_mask, *,
                            seed: int) -> dict:
    """Parts 5 and 4 (semantic level) on the expressions ``rows`` (their image ``owner[rows]``);
    text: the expressions' ``encode.TextViews``."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    rows = rows[text.phrase_mask[rows].sum(dim=1) >= 2]
    if rows.numel() == 0:
        return {}
    phrase_emb, phrase_mask = text.phrases[rows], text.phrase_mask[rows]
    image = owner[rows]
    region_emb, region_mask = box_emb[image], object_mask[image]
    model, lcfg = objective.model, objective.loss_config
    A = float(model.alignment_scale()) * region_emb @ phrase_emb.transpose(1, 2)
    within = int(region_mask.sum(1).max()) <= EXACT_LIMIT and int(phrase_mask.sum(1).max()) <= EXACT_LIMIT
    labels = lab.semantic_interactions(A.double(), region_mask, phrase_mask,
                                       method="exact" if within else "sampling",
                                       num_samples=lcfg.semantic_num_samples, seed=seed)
    out = {"diag_semantic_gold": gold_phrase_accuracy(labels, expression_object[rows], phrase_mask),
           "diag_semantic_chance": chance_level(phrase_mask)}
    if "semantic" in objective.unsil:
        unsil = objective.unsil["semantic"]
        targets = (region_mask[:, :, None] & phrase_mask[:, None, :]).nonzero()
        inputs = semantic_unsil_inputs(img_global[image], text.global_emb[rows], region_emb, phrase_emb,
                                       region_mask, phrase_mask, targets)
        with evaluating(model):
            estimate, _ = unsil(_on(inputs, unsil))
        _put(out, "diag_unsil_corr_semantic", pearson(estimate.double().cpu() * unsil.scale(),
                                                      labels[tuple(targets.unbind(1))]))
    return out


def evaluate_diagnostics(objective, split, tokenizer, *, device="cpu", batch_size: int = 64,
                         progress: Optional[bool] = None, num_label_images: int = NUM_LABEL_IMAGES,
                         seed: int = 0) -> dict:
    """The alignment diagnostics of the module docstring on a grounding split: {"diag_...": value}.

    objective: a ``loupe_core.objective.LoupeObjective`` on ``device``: its ``model`` is
    diagnosed, its ``loss_config`` (label game, target, samples) and UNSIL networks say which
    labels and estimators are checked; split: ``GroundingSplit`` (images uint8
    ``[N, S, S, 3]``, ``expressions``, ``expression_image``, ``boxes`` float[R, 4] xyxy
    model-input pixels); tokenizer: the run's ``loupe_core.data.Tokenizer``.
    ``num_label_images``: images drawn (seeded by ``seed``) for parts 3-5, 0 to skip them (their
    cost is the token-level sampling: about 5 x ``token_num_samples`` x 8 regions x (cells + 2)
    tower evaluations per image); ``seed`` also seeds the background draws and the label samples.
    """
    model = objective.model
    check_count("num_label_images", num_label_images, 0)
    check_count("seed", seed, 0)
    expressions = list(split.expressions)
    if not expressions:
        raise ValueError("split must hold at least one expression")
    num_images = len(split.images)
    objects, object_mask, expression_object = image_objects(split.expression_image, split.boxes, num_images)
    owner = torch.as_tensor(list(split.expression_image), dtype=torch.long)
    common = dict(device=device, batch_size=batch_size, progress=progress)
    img_global, patch_emb, ranked, grid, cell = _image_features(model, split.images, top_k=max(RECALL_KS), **common)
    box_emb = box_embeddings(patch_emb, objects, grid, cell)
    text = encode_text_views(model, tokenizer, expressions, desc="diagnostic expressions", **common)
    out = {"diag_truebox_cls": truebox_accuracy(box_emb[owner], object_mask[owner], text.global_emb,
                                                expression_object),
           "diag_truebox_phrase": truebox_accuracy(box_emb[owner], object_mask[owner], text.first_phrase,
                                                   expression_object),
           "diag_truebox_chance": chance_level(object_mask[owner])}

    geometry = model.region_head.geometry(grid, cell, "cpu", torch.float32)
    for k, value in proposal_recall(ranked, objects, object_mask, RECALL_KS).items():
        out[f"diag_recall@{k}"] = value
    for k, value in random_recall(geometry.boxes, objects, object_mask, RECALL_KS).items():
        out[f"diag_recall_random@{k}"] = value
    out["diag_recall_oracle"] = oracle_recall(geometry.boxes, objects, object_mask)
    out["diag_recall_oracle_strict"] = oracle_recall(geometry.boxes, objects, object_mask, STRICT_IOU_THRESHOLD)
    aligned = _alignment_label_metrics(patch_emb, text, owner, expression_object, objects, object_mask, geometry)
    out.update(aligned)
    if objective.loss_config.token_game == "alignment":
        _put(out, "diag_label_auc", aligned.get(f"diag_label_auc_alignment_{objective.loss_config.token_target}"))

    if num_label_images:
        generator = torch.Generator().manual_seed(seed)
        first = {}
        for r, i in enumerate(owner.tolist()):
            first.setdefault(i, r)
        candidates = torch.tensor(sorted(first), dtype=torch.long)
        pick = candidates[torch.randperm(candidates.numel(), generator=generator)[:num_label_images]].sort().values
        out.update(_token_label_metrics(objective, tokenizer, split.images[pick.numpy()],
                                        [expressions[first[i]] for i in pick.tolist()], objects[pick],
                                        object_mask[pick], geometry, device=device, seed=seed, generator=generator))
        picked = set(pick.tolist())
        rows = [r for r, i in enumerate(owner.tolist()) if i in picked]
        out.update(_semantic_label_metrics(objective, text, rows, owner, expression_object, img_global, box_emb,
                                           object_mask, seed=seed))
    return {key: float(value) for key, value in out.items()}
