"""Training: the generic loop (trainer), checkpoints, distributed set-up, logs, schedule, data order.

``train`` runs a configured model on a dataset or stream, with an optional ``evaluate_fn``;
it knows no dataset, evaluator or picture. ``loupe_core.pipeline.pretrain`` assembles model,
data and evaluation from a ``RunConfig`` and is what ``loupe pretrain`` calls.
"""
from loupe_core.train.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
