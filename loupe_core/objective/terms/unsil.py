"""L_UNSIL (spec Eq. 12): the sum of the hybrid label sources' UNSIL losses of this forward
(``view.unsil_losses``, added by L_TSA's and L_FSA's hybrid sources, which run before it). The
networks belong to the objective (``LoupeObjective.unsil``, one per hybrid level)."""
from .base import Term, register_term


@register_term
class UnsilTerm(Term):
    """Section: the ``LossConfig`` (``loss.unsil`` on: some enabled level's source is "hybrid")."""

    name, collective = "unsil", False  # a sum of the sources' losses: their collectives ran in them

    @classmethod
    def section(cls, loss_config):
        return loss_config if loss_config.unsil else None

    def forward(self, view, step):
        return sum(view.unsil_losses)
