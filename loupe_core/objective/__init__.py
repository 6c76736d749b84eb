"""LOUPE's training objective: losses, Shapley labels of both levels, UNSIL, and ``LoupeObjective``,
which wraps a ``LoupeModel`` with them."""
from .config import LossConfig
from .losses import ContrastiveBank, LossOutput
from .loupe_objective import LoupeObjective
from .step import StepContext

__all__ = ["LoupeObjective", "LossConfig", "LossOutput", "ContrastiveBank", "StepContext"]
