"""Linear probe (spec section 7): one linear layer on frozen image [CLS] embeddings.

Tensor level: :func:`fit_linear_probe` trains ``nn.Linear(d, C)`` by full-batch L-BFGS on the
L2-regularised multinomial logistic loss in float64, from zero weights (a convex problem with a
deterministic optimiser: same features, same probe); :func:`linear_probe_accuracy` fits on one
set and scores top-1 on another. Model level: :func:`evaluate_linear_probe`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shapley_kernels.checks import check_finite, check_tensor

from .classification import top1_accuracy
from .encode import encode_image_array

WEIGHT_DECAY = 1e-4
MAX_ITER = 200


def _check_features(name: str, features: torch.Tensor, labels: torch.Tensor, label_name: str) -> None:
    check_tensor(name, features, dims=2, dtype_kind="float")
    check_finite(name, features)
    check_tensor(label_name, labels, dims=1, dtype_kind="int")
    if labels.shape[0] != features.shape[0] or labels.numel() == 0:
        raise ValueError(f"{label_name} must hold one label per row of {name} ({features.shape[0]}, at least 1), "
                         f"got {labels.shape[0]}")
    if int(labels.min()) < 0:
        raise ValueError(f"{label_name} must be non-negative class indices, got {int(labels.min())}")


def probe_objective(probe: nn.Linear, features: torch.Tensor, labels: torch.Tensor,
                    weight_decay: float) -> torch.Tensor:
    """Mean cross-entropy of ``probe(features)`` plus ``weight_decay / 2 * ||W||^2`` (bias not decayed)."""
    return F.cross_entropy(probe(features), labels) + 0.5 * weight_decay * probe.weight.pow(2).sum()


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                     weight_decay: float = WEIGHT_DECAY, max_iter: int = MAX_ITER) -> nn.Linear:
    """A float64 ``nn.Linear(d, num_classes)`` fitted on features float[N, d], labels long[N]."""
    _check_features("features", features, labels, "labels")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= int(labels.max()):
        raise ValueError(f"num_classes must be an int above the largest label ({int(labels.max())}), got {num_classes!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    x = features.detach().to(torch.float64)
    y = labels.to(x.device)
    probe = nn.Linear(x.shape[1], num_classes, dtype=torch.float64, device=x.device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = probe_objective(probe, x, y, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe.requires_grad_(False)


def linear_probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                          test_labels: torch.Tensor, num_classes: int, *, weight_decay: float = WEIGHT_DECAY) -> float:
    """Top-1 accuracy (percent) on the test set of a probe fitted on the training set."""
    _check_features("test_features", test_features, test_labels, "test_labels")
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"test_features must have width {train_features.shape[1]}, got {test_features.shape[1]}")
    probe = fit_linear_probe(train_features, train_labels, num_classes, weight_decay=weight_decay)
    predictions = probe(test_features.detach().to(torch.float64)).argmax(dim=1)
    return top1_accuracy(predictions, test_labels)


def evaluate_linear_probe(model, train_split, test_split, *, device="cpu", batch_size: int = 64,
                          progress=None) -> dict:
    """Model level: ``{"top1": percent}`` of a probe fitted on ``train_split``'s image [CLS]
    embeddings and tested on ``test_split``'s (classification splits with the same classes)."""
    if list(train_split.classes) != list(test_split.classes):
        raise ValueError("train_split and test_split must have the same classes for a linear probe")
    train_x = encode_image_array(model, train_split.images, device=device, batch_size=batch_size,
                                 progress=progress, desc="probe train images")
    test_x = encode_image_array(model, test_split.images, device=device, batch_size=batch_size,
                                progress=progress, desc="probe test images")
    return {"top1": linear_probe_accuracy(train_x, torch.as_tensor(train_split.labels, dtype=torch.long), test_x,
                                          torch.as_tensor(test_split.labels, dtype=torch.long),
                                          len(train_split.classes))}
