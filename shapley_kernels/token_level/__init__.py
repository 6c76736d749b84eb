"""Token-level Shapley engine for dual encoders (spec section 3, api.md "Token-level games").

TransformerTower: a coalition encoder (ViT- or BERT-style) that packs kept tokens for "drop".
dual_encoder_game: the batched game v1 of one image-text pair.
region_interaction: Eq. 7 interactions of candidate regions, batched over pairs.
"""
from .game import dual_encoder_game
from .region import choose_region_method, region_interaction
from .towers import TransformerTower

__all__ = ["TransformerTower", "dual_encoder_game", "region_interaction", "choose_region_method"]
