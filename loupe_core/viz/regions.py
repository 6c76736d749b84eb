"""Paper Fig. 5 (left): regions drawn on the image with their token-level interaction and confidence.

The region head's top-K regions (solid) and a few (cell, anchor) candidates drawn at random
(dashed, the paper's contrast) are labelled ``I=<I([R])> p=<p(R)>``, where I([R]) is the
token-level Shapley interaction of spec Eq. 7 in the pair's game v1, computed by
``shapley_kernels.region_interaction`` on the model's own towers (through
``loupe_core.objective.labels.token_interactions``, the function training takes its labels from).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

from loupe_core.objective import labels
from loupe_core.eval.encode import evaluating

from .figures import new_figure, save_figure
from .pair import PairView


def draw_regions(image: np.ndarray, boxes: torch.Tensor, confidences: torch.Tensor, interactions: torch.Tensor, *,
                 random: Optional[Sequence[bool]] = None, title: str = ""):
    """The figure of ``plot_regions``: each box drawn in the colour of its interaction on a
    diverging scale symmetric about 0 (colour bar beside the image), solid for the top-K regions
    and dashed for the random candidates; the labels ``#k I=... p=...`` sit in a legend outside
    the image, so they never overlap one another or the regions."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    from matplotlib.patheffects import Normal, Stroke

    K = boxes.shape[0]
    if confidences.shape != (K,) or interactions.shape != (K,):
        raise ValueError(f"confidences and interactions must have shape [{K}], got "
                         f"{list(confidences.shape)} and {list(interactions.shape)}")
    random = [False] * K if random is None else list(random)
    values = interactions.double().cpu()
    bound = max(float(values.abs().max()) if K else 0.0, 1e-12)
    norm, cmap = Normalize(-bound, bound), colormaps["coolwarm"]
    fig = new_figure(7.5, 5)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(image, interpolation="nearest")
    handles, tags = [], []
    for k in range(K):
        x0, y0, x1, y1 = boxes[k].tolist()
        colour, style = cmap(norm(float(values[k]))), "--" if random[k] else "-"
        rect = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.5, ec=colour, ls=style)
        rect.set_path_effects([Stroke(linewidth=4, foreground="black"), Normal()])  # visible on any pixels
        ax.add_patch(rect)
        tags.append(ax.text(x0 + 0.5, y0 + 0.5, f"#{k}", color="black", fontsize=6, va="top",
                            bbox={"fc": colour, "alpha": 0.8, "pad": 0.5, "lw": 0}))
        handles.append(Line2D([], [], color=colour, lw=2.5, ls=style,
                              label=f"#{k} I={float(values[k]):+.2g} p={float(confidences[k]):.2f}"
                                    + (" (random)" if random[k] else "")))
    ax.set_axis_off()
    ax.set_title(title, fontsize=8, wrap=True)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.046, pad=0.02,
                 label="interaction I([R])")
    if handles:  # below the image, outside it (savefig with bbox_inches="tight" keeps it in the PNG)
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(2, K), fontsize=7,
                  frameon=False)
    _separate(fig, tags)
    return fig


def _separate(fig, texts) -> None:
    """Move each text down (in display space) until its box overlaps none placed before it."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for text in texts:
        for _ in range(len(texts) + 1):
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            clash = next((p for p in placed if box.overlaps(p)), None)
            if clash is None:
                break
            x, y = text.get_transform().transform(text.get_position())
            shift = box.y1 - clash.y0 + 1  # just below the box it hits
            text.set_position(text.get_transform().inverted().transform((x, y - shift)))
        placed.append(text.get_window_extent(renderer).expanded(1.05, 1.1))


def plot_regions(image: np.ndarray, boxes: torch.Tensor, confidences: torch.Tensor, interactions: torch.Tensor,
                 path: str, *, random: Optional[Sequence[bool]] = None, title: str = "") -> str:
    """Draw boxes float[K, 4] (xyxy pixels) on image uint8 ``[S, S, 3]`` with their labels
    (``draw_regions``); write PNG."""
    fig = draw_regions(image, boxes, confidences, interactions, random=random, title=title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def region_candidates(model, view: PairView, num_random: int, seed: int):
    """Top-K and ``num_random`` random candidates: (boxes float[K', 4], confidences float[K'],
    final-grid masks bool[K', N_I], random flags list[bool])."""
    feats = view.image_feats
    head = model.region_head
    with evaluating(model):
        geometry = head.geometry(feats.grid, feats.patch_size, feats.patch_emb.device, feats.patch_emb.dtype)
        confidence = torch.sigmoid(head(feats.patch_emb, feats.grid))[0]
    chosen = set()
    for box in view.regions.boxes[0]:
        chosen.add(int((geometry.boxes - box).abs().sum(dim=1).argmin()))
    rest = torch.tensor([i for i in range(geometry.boxes.shape[0]) if i not in chosen], dtype=torch.long)
    order = torch.randperm(rest.numel(), generator=torch.Generator().manual_seed(seed))
    extra = rest[order[:num_random]].to(geometry.boxes.device)
    boxes = torch.cat([view.regions.boxes[0], geometry.boxes[extra]])
    conf = torch.cat([view.regions.scores[0], confidence[extra]])
    masks = torch.cat([view.regions.patch_masks[0], geometry.masks[extra]])
    return boxes, conf, masks, [False] * view.regions.boxes.shape[1] + [True] * extra.numel()


def token_region_interactions(model, view: PairView, boxes: torch.Tensor, final_masks: torch.Tensor, *,
                              num_samples: int, seed: int, baseline: str = "zero") -> torch.Tensor:
    """I([R]) float[K'] of each region (spec Eq. 7, masked players set to ``baseline``) for the pair
    of ``view`` (towers in eval mode); boxes float[K', 4], final_masks bool[K', N_I]."""
    tower = model.image_tower
    masks = model.token_masks(boxes, final_masks)
    batch = view.batch
    with evaluating(model):
        image_tokens = tower.embed_tokens(batch["images"])
        text_tokens = model.text_tower.embed_tokens(batch["input_ids"])
    values = labels.token_interactions(tower, model.text_tower, image_tokens, text_tokens, batch["text_mask"],
                                       masks[None], method="auto", baseline=baseline,
                                       num_samples=num_samples, seed=seed)
    return values[0].float().cpu()


def region_interaction_figure(model, view: PairView, image: np.ndarray, path: str, *, num_random: int = 2,
                              num_samples: int = 64, seed: int = 0, baseline: str = "zero") -> str:
    """Fig. 5 (left) for one pair: compute the interactions and draw them; returns ``path``."""
    boxes, conf, masks, random = region_candidates(model, view, num_random, seed)
    values = token_region_interactions(model, view, boxes, masks, num_samples=num_samples, seed=seed,
                                       baseline=baseline)
    caption = view.batch["captions"][0]
    return plot_regions(image, boxes.float().cpu(), conf.float().cpu(), values, path, random=random,
                        title=f"{caption}\n(solid: top-{view.regions.boxes.shape[1]} regions, dashed: random)")
