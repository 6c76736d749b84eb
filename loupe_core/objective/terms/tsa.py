"""L_TSA (spec Eq. 8): the region head's logits of its candidates against their min-max
normalised token-level Shapley labels, from the label source the config names
(``label_sources.token_label_source``)."""
from ..losses import tsa_loss
from ..label_sources import token_label_source
from .base import Term, register_term


@register_term
class TsaTerm(Term):
    """Section: the ``LossConfig`` itself (``token_*``, ``pairs_per_step`` and, for the hybrid
    source, the ``unsil_*`` / ``warmup_fraction`` / ``probe_size`` keys)."""

    name, random_candidates = "tsa", True

    @classmethod
    def section(cls, loss_config):
        return loss_config if loss_config.tsa else None

    def __init__(self, section, model, objective):
        super().__init__(section, model, objective)
        self.source = token_label_source(section, model, objective.unsil["token"] if "token" in objective.unsil
                                         else None)

    def needs(self):
        return ("phrase_tokens", "phrase_mask") if self.config.token_game == "alignment" else ()

    def forward(self, view, step):
        logits, values, labelled = self.source(view)
        return tsa_loss(logits, values, labelled, step.ranks)
