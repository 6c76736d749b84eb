"""L_FSA (spec Eq. 11): the region-phrase alignment logits A of the top candidates against their
semantic-level Shapley labels (``label_sources.semantic_label_source``)."""
from ..losses import fsa_loss
from ..label_sources import semantic_label_source
from .base import Term, register_term


@register_term
class FsaTerm(Term):
    """Section: the ``LossConfig`` itself (``semantic_*`` and, for the hybrid source, the
    ``unsil_*`` / ``warmup_fraction`` / ``probe_size`` keys)."""

    name, batch_keys = "fsa", ("phrase_tokens", "phrase_mask")

    @classmethod
    def section(cls, loss_config):
        return loss_config if loss_config.fsa else None

    def __init__(self, section, model, objective):
        super().__init__(section, model, objective)
        self.source = semantic_label_source(section, objective.unsil["semantic"] if "semantic" in objective.unsil
                                            else None)

    def forward(self, view, step):
        values = self.source(view)
        A = view.alignment
        region_mask = A.new_ones(A.shape[:2], dtype=bool)
        return fsa_loss(A, values, region_mask, view.batch["phrase_mask"], step.ranks)
