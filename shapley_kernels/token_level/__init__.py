"""Token-level Shapley engine for dual encoders (spec section 3, api.md "Token-level games").

TransformerTower: a coalition encoder (ViT- or BERT-style) that packs kept tokens for "drop".
"""
from .towers import TransformerTower

__all__ = ["TransformerTower"]
