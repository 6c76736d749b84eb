"""The LOUPE model (docs/CONTRACTS.md section 5) and its configuration."""
from ..losses import ContrastiveBank, LossOutput
from .config import LossConfig, ModelConfig
from .loupe import ImageFeatures, LoupeModel, Regions, TextFeatures

__all__ = ["LoupeModel", "ModelConfig", "LossConfig", "LossOutput", "ContrastiveBank",
           "ImageFeatures", "TextFeatures", "Regions"]
