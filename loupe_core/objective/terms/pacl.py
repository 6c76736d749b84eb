"""PACL's patch-level contrastive term (``losses.pacl_loss``): each text's [CLS] pools the image's
patches by their compatibility with it."""
from dataclasses import dataclass

from ..losses import pacl_loss
from .base import Term, register_term


@dataclass
class PaclSection:
    """weight: ``loss.pacl`` (> 0)."""

    weight: float


@register_term
class PaclTerm(Term):
    name = "pacl"

    @classmethod
    def section(cls, loss_config):
        return PaclSection(loss_config.pacl) if loss_config.pacl > 0 else None

    def forward(self, view, step):
        return self.config.weight * pacl_loss(view.txt.global_emb, view.img.patch_emb, view.model.region_scale(),
                                              step.ranks)
