"""Paper Fig. 5 (right): the region-phrase alignment matrix beside the semantic-level interactions.

Left panel: the row softmax of A over the caption's phrases (what L_FSA trains, spec Eq. 11).
Right panel: I([H_ij]) of spec Eq. 10 in game v2, from ``shapley_kernels.region_phrase_interaction``
(exact where K + M is small, as training's default semantic source).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..objective.labels import semantic_interactions
from .figures import new_figure, save_figure
from .pair import PairView


def plot_alignment_matrices(alignment: torch.Tensor, interaction: torch.Tensor, path: str, *,
                            phrase_labels: Sequence[str], title: str = "",
                            alignment_name: str = "alignment softmax_j(A)") -> str:
    """Two heatmaps of float[K, M] (alignment, titled ``alignment_name``, and interaction) with
    the values written in; PNG."""
    if alignment.dim() != 2 or alignment.shape != interaction.shape:
        raise ValueError(f"alignment and interaction must be float[K, M] of one shape, got "
                         f"{list(alignment.shape)} and {list(interaction.shape)}")
    K, M = alignment.shape
    fig = new_figure(max(5.0, 2.0 + 1.6 * M), 1.5 + 0.45 * K)  # wide enough for the panel titles
    for col, (name, mat, cmap) in enumerate(((alignment_name, alignment, "viridis"),
                                              ("interaction I([H_ij])", interaction, "coolwarm"))):
        ax = fig.add_subplot(1, 2, col + 1)
        data = mat.detach().double().cpu().numpy()
        bound = max(abs(data).max(), 1e-12) if col else None
        im = ax.imshow(data, cmap=cmap, aspect="auto",
                       **({"vmin": -bound, "vmax": bound} if col else {"vmin": 0.0, "vmax": 1.0}))
        for i in range(K):
            for j in range(M):
                ax.text(j, i, f"{data[i, j]:.2f}" if col == 0 else f"{data[i, j]:.3f}", ha="center",
                        va="center", fontsize=6)
        ax.set_xticks(range(M), [str(p)[:18] for p in phrase_labels] + [""] * (M - len(phrase_labels)),
                      rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(K), [f"region {i}" for i in range(K)], fontsize=7)
        ax.set_title(name, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.05)
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def pair_interactions(view: PairView, *, num_samples: int = 500, seed: int = 0) -> torch.Tensor:
    """I([H_ij]) float[K, M] of the pair (``labels.semantic_interactions``, "auto": exact where the
    pair is small; zeros when the caption has no phrase)."""
    A = view.A.detach()
    region_mask = torch.ones(A.shape[:2], dtype=torch.bool, device=A.device)
    return semantic_interactions(A, region_mask, view.batch["phrase_mask"], method="auto", num_samples=num_samples,
                                 seed=seed)[0].cpu()


def alignment_panel(A: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(float[K, M], its title): the row softmax over the caption's phrases of A float[K, M]
    (what L_FSA trains), or, for a caption of one phrase, where that row softmax is 1 everywhere,
    the softmax over the K regions (which region the phrase picks); zeros without a phrase.
    present bool[M]: the real phrases."""
    if not bool(present.any()):
        return torch.zeros_like(A), "alignment (no phrase)"
    if int(present.sum()) == 1:
        column = torch.softmax(A[:, present], dim=0)
        return torch.zeros_like(A).masked_scatter(present[None, :].expand_as(A), column), \
            "alignment softmax_i(A) (one phrase)"
    return torch.softmax(A.masked_fill(~present[None, :], float("-inf")), dim=1), "alignment softmax_j(A)"


def alignment_figure(view: PairView, path: str, *, seed: int = 0) -> str:
    """Fig. 5 (right) for one pair; returns ``path``."""
    panel, name = alignment_panel(view.A[0].detach().double().cpu(), view.batch["phrase_mask"][0].cpu())
    return plot_alignment_matrices(panel, pair_interactions(view, seed=seed), path,
                                   phrase_labels=view.phrases, title=view.batch["captions"][0], alignment_name=name)
