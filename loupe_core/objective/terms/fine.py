"""The cross-image fine-grained contrastive term (``losses.fine_contrastive_loss``, FILIP-style
late interaction): the caption's word tokens or noun phrases against the image's patches."""
from dataclasses import dataclass

from ..losses import fine_contrastive_loss
from .base import Term, register_term


@dataclass
class FineSection:
    """weight: ``loss.fine_contrast`` (> 0); queries: ``loss.fine_queries``, "tokens" or "phrases"."""

    weight: float
    queries: str


@register_term
class FineTerm(Term):
    name = "fine"

    @classmethod
    def section(cls, loss_config):
        return (FineSection(loss_config.fine_contrast, loss_config.fine_queries)
                if loss_config.fine_contrast > 0 else None)

    def needs(self):
        return ("phrase_tokens", "phrase_mask") if self.config.queries == "phrases" else ()

    def forward(self, view, step):
        queries, query_mask = ((view.txt.token_emb, view.batch["text_mask"]) if self.config.queries == "tokens"
                               else (view.phrases, view.batch["phrase_mask"]))
        return self.config.weight * fine_contrastive_loss(queries, query_mask, view.img.patch_emb,
                                                          view.model.region_scale(), step.ranks)
