"""L_CMC (spec Eq. 1): the symmetric InfoNCE of the global image and text embeddings, over the
whole accumulated batch where the trainer hands a bank (``losses.cmc_loss``)."""
from dataclasses import dataclass

from ..losses import cmc_loss
from .base import Term, register_term


@dataclass
class CmcSection:
    """L_CMC has no setting beyond ``loss.cmc`` (on / off)."""


@register_term
class CmcTerm(Term):
    name, bank = "cmc", True

    @classmethod
    def section(cls, loss_config):
        return CmcSection() if loss_config.cmc else None

    def forward(self, view, step):
        return cmc_loss(view.img.global_emb, view.txt.global_emb, view.model.contrastive_scale(), step.bank,
                        step.ranks)
