"""Zero-shot visual grounding (spec section 7): top-1 region per referring expression, acc@IoU 0.5.

Tensor level: :func:`paired_box_iou` and :func:`grounding_accuracy`. Model level:
:func:`evaluate_grounding` scores the region head's top-K regions of each image (K =
``model.config.ground_top_k``, 0: ``top_k``) with ``LoupeModel.ground_scores`` against the
expression's embedding (its [CLS] or its first noun phrase: ``model.config.ground_query``).
"""
from __future__ import annotations

import torch

from shapley_kernels.checks import check_finite, check_tensor

from ..model.region_head import dilate_cells, refine_boxes
from .encode import batches, encode_phrase_list, encode_text_list, evaluating, image_tensor

IOU_THRESHOLD = 0.5
STRICT_IOU_THRESHOLD = 0.7  # the strict reading: a hit must fit the object, not merely overlap it


def paired_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU float[...] of matching xyxy boxes a float[..., 4] and b float[..., 4] (0 when both are empty)."""
    check_tensor("a", a, dtype_kind="float")
    check_tensor("b", b, dtype_kind="float")
    if a.shape != b.shape or a.shape[-1:] != (4,):
        raise ValueError(f"a and b must have the same shape [..., 4], got {list(a.shape)} and {list(b.shape)}")
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(dim=-1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def grounding_accuracy(region_boxes: torch.Tensor, region_scores: torch.Tensor, gt_boxes: torch.Tensor,
                       iou_threshold: float = IOU_THRESHOLD) -> float:
    """Percentage of expressions whose top-scoring region has IoU >= ``iou_threshold`` with the truth.

    region_boxes float[R, K, 4] xyxy candidate regions of each expression's image; region_scores
    float[R, K] (first region wins ties); gt_boxes float[R, 4] xyxy, same coordinates.
    """
    check_tensor("region_boxes", region_boxes, dims=3, dtype_kind="float")
    check_tensor("region_scores", region_scores, dims=2, dtype_kind="float")
    check_tensor("gt_boxes", gt_boxes, dims=2, dtype_kind="float")
    for name, x in (("region_boxes", region_boxes), ("region_scores", region_scores), ("gt_boxes", gt_boxes)):
        check_finite(name, x)
    R, K = region_scores.shape
    if R == 0 or K == 0:
        raise ValueError(f"region_scores needs at least one expression and one region, got shape [{R}, {K}]")
    if region_boxes.shape != (R, K, 4):
        raise ValueError(f"region_boxes must have shape [{R}, {K}, 4], got {list(region_boxes.shape)}")
    if gt_boxes.shape != (R, 4):
        raise ValueError(f"gt_boxes must have shape [{R}, 4], got {list(gt_boxes.shape)}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    best = region_scores.argmax(dim=1)
    chosen = region_boxes[torch.arange(R), best]
    iou = paired_box_iou(chosen.double(), gt_boxes.double())
    return 100.0 * float((iou >= iou_threshold).double().mean())


def region_proposals(model, images, *, top_k: int, device="cpu", batch_size: int = 64,
                     progress=None, desc: str = "regions"):
    """(boxes float[N, K, 4] xyxy model-input pixels, region embeddings float[N, K, d], scores float[N, K])."""
    boxes, emb, scores = [], [], []
    with evaluating(model):
        for sl in batches(len(images), batch_size, progress=progress, desc=desc):
            regions = model.propose_regions(model.encode_images(image_tensor(images[sl], device)), top_k)
            boxes.append(regions.boxes.float().cpu())
            emb.append(regions.emb.float().cpu())
            scores.append(regions.scores.float().cpu())
    if not boxes:
        raise ValueError("images must hold at least one image")
    return torch.cat(boxes), torch.cat(emb), torch.cat(scores)


def expression_embeddings(model, tokenizer, expressions, *, device="cpu", batch_size: int = 64,
                          progress=None) -> torch.Tensor:
    """float[R, d]: the [CLS] or first-noun-phrase embedding of each expression (``model.config.ground_query``)."""
    encode = encode_phrase_list if model.config.ground_query == "phrase" else encode_text_list
    return encode(model, tokenizer, list(expressions), device=device, batch_size=batch_size, progress=progress,
                  desc="referring expressions")


def refined_boxes(patch_emb: torch.Tensor, regions, query_emb: torch.Tensor, grid, cell: float) -> torch.Tensor:
    """float[R, K, 4]: each region's box moved (size kept) to the centroid of the query's evidence
    in its cells and their neighbours (``region_head.dilate_cells``): cell weights = cosine of
    the cell's embedding with the query minus its mean over the image's cells, negatives 0.

    patch_emb float[R, N, d] and query_emb float[R, d] (L2-normalised), regions: ``Regions`` with
    leading dims [R, K] (``boxes``, ``patch_masks``).
    """
    cos = (patch_emb @ query_emb[:, :, None]).squeeze(2)  # [R, N]
    evidence = (cos - cos.mean(dim=1, keepdim=True)).clamp(min=0)
    window = dilate_cells(regions.patch_masks, grid)  # [R, K, N]
    return refine_boxes(regions.boxes, evidence[:, None, :] * window, grid, cell)


def ground_expressions(model, images, expression_image, query_emb: torch.Tensor, *, top_k: int, device="cpu",
                       batch_size: int = 64, progress=None):
    """(boxes float[R, K, 4] xyxy model-input pixels, scores float[R, K]) of each expression's candidates.

    images uint8 [N, S, S, 3]; expression_image: image index of each of the R expressions;
    query_emb float[R, d]. The candidates are the head's ``top_k`` regions of the expression's
    image, scored by ``LoupeModel.ground_scores``; with ``model.config.ground_refine`` the boxes are
    ``refined_boxes`` (scores unchanged).
    """
    owner = torch.as_tensor(expression_image, dtype=torch.long)
    R = owner.shape[0]
    boxes, scores = None, None
    with evaluating(model):
        for sl in batches(len(images), batch_size, progress=progress, desc="grounding regions"):
            feats = model.encode_images(image_tensor(images[sl], device))
            regions = model.propose_regions(feats, top_k)
            mine = ((owner >= sl.start) & (owner < sl.stop)).nonzero().squeeze(1)
            local = (owner[mine] - sl.start).to(feats.patch_emb.device)
            picked = type(regions)(*(field[local] for field in regions))
            query = query_emb[mine].to(feats.patch_emb.device)
            s = model.ground_scores(feats.patch_emb[local], picked, query)
            if boxes is None:
                boxes = torch.zeros(R, s.shape[1], 4)
                scores = torch.full((R, s.shape[1]), float("-inf"))
            picked_boxes = (refined_boxes(feats.patch_emb[local], picked, query, feats.grid, feats.patch_size)
                            if model.config.ground_refine else picked.boxes)
            boxes[mine] = picked_boxes.float().cpu()
            scores[mine] = s.float().cpu()
    if boxes is None:
        raise ValueError("images must hold at least one image")
    return boxes, scores


def evaluate_grounding(model, split, tokenizer, *, top_k: int, device="cpu", batch_size: int = 64,
                       progress=None) -> dict:
    """Model level: ``{"acc@0.5": percent, "acc@0.7": percent}`` on a grounding split (the same
    top-1 region per expression, a hit at IoU >= 0.5 and at the strict IoU >= 0.7).

    split: images uint8 ``[N, S, S, 3]``, ``expressions`` (texts), ``expression_image`` (image
    index of each) and ``boxes`` float[R, 4] xyxy in the model-input pixels. ``top_k``: regions
    per image (``model.config.ground_top_k`` overrides it when set).
    """
    k = model.config.ground_top_k or top_k
    query = expression_embeddings(model, tokenizer, split.expressions, device=device, batch_size=batch_size,
                                  progress=progress)
    boxes, scores = ground_expressions(model, split.images, split.expression_image, query, top_k=k, device=device,
                                       batch_size=batch_size, progress=progress)
    gt = torch.as_tensor(split.boxes, dtype=torch.float32)
    return {"acc@0.5": grounding_accuracy(boxes, scores, gt),
            "acc@0.7": grounding_accuracy(boxes, scores, gt, STRICT_IOU_THRESHOLD)}
