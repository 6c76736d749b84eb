"""SLIP's self-supervised term (``losses.simclr_loss``) on two random views of each image
(``data.augment.random_view``) through an MLP projection head, which this term owns."""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from ...data.augment import random_view
from ..losses import simclr_loss
from .base import Term, register_term


@dataclass
class SimclrSection:
    """weight: ``loss.simclr`` (> 0); temperature: ``loss.simclr_temperature``."""

    weight: float
    temperature: float


@register_term
class SimclrTerm(Term):
    name = "simclr"

    @classmethod
    def section(cls, loss_config):
        return SimclrSection(loss_config.simclr, loss_config.simclr_temperature) if loss_config.simclr > 0 else None

    def __init__(self, section, model, objective):
        super().__init__(section, model, objective)
        d = model.config.embed_dim
        self.head = nn.Sequential(nn.Linear(d, 4 * d), nn.LayerNorm(4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, view, step):
        """Each pair's view draws come from its global row, so they do not depend on its batch or rank."""
        images = view.batch["images"]
        draws = step.uniforms("views", 10, images.device)    # [b, 10]
        views = [F.normalize(self.head(view.model.encode_images(random_view(images, u)).global_emb), dim=-1)
                 for u in (draws[:, :5], draws[:, 5:])]
        return self.config.weight * simclr_loss(*views, self.config.temperature, step.ranks)
