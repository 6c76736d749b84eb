"""Training: the loop (trainer), checkpoints, distributed set-up, logs, schedule, data order.

``train`` runs a configured model on a map-style dataset; ``pretrain`` (loupe_core.train.run)
assembles model, data and evaluation from a ``RunConfig`` and is what ``loupe pretrain`` calls.
"""
from loupe_core.train.trainer import TrainingDiverged, TrainResult, train

__all__ = ["TrainResult", "TrainingDiverged", "train"]
