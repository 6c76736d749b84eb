"""The LOUPE model (docs/CONTRACTS.md section 5): dual encoder and region head, and its configuration."""
from .config import ModelConfig
from .loupe import ImageFeatures, LoupeModel, Regions, TextFeatures

__all__ = ["LoupeModel", "ModelConfig", "ImageFeatures", "TextFeatures", "Regions"]
