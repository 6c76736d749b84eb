"""Zero-shot classification, CLIP protocol (spec section 7): prompt-template ensembles, top-1.

Tensor level: :func:`class_embeddings` (mean of the L2-normalised template embeddings of each
class, normalised again) and :func:`zero_shot_accuracy`. Model level:
:func:`evaluate_classification`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from shapley_kernels.checks import check_finite, check_tensor

from .encode import encode_image_array, encode_text_list


def class_embeddings(template_emb: torch.Tensor) -> torch.Tensor:
    """float[C, T, d] embeddings of each class in each of T templates -> float[C, d] (unit rows)."""
    check_tensor("template_emb", template_emb, dims=3, dtype_kind="float")
    check_finite("template_emb", template_emb)
    if template_emb.shape[0] == 0 or template_emb.shape[1] == 0:
        raise ValueError(f"template_emb needs at least one class and one template, got shape "
                         f"{list(template_emb.shape)}")
    return F.normalize(F.normalize(template_emb, dim=-1).mean(dim=1), dim=-1)


def zero_shot_predictions(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """long[N]: the class of highest cosine similarity for each image (first class on ties).

    image_emb float[N, d], class_emb float[C, d].
    """
    check_tensor("image_emb", image_emb, dims=2, dtype_kind="float")
    check_tensor("class_emb", class_emb, dims=2, dtype_kind="float")
    check_finite("image_emb", image_emb)
    check_finite("class_emb", class_emb)
    if image_emb.shape[1] != class_emb.shape[1]:
        raise ValueError(f"class_emb must have image_emb's width {image_emb.shape[1]}, got {class_emb.shape[1]}")
    return (F.normalize(image_emb.double(), dim=-1) @ F.normalize(class_emb.double(), dim=-1).T).argmax(dim=1)


def top1_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of ``predictions`` long[N] equal to ``labels`` long[N] (N >= 1)."""
    check_tensor("labels", labels, dims=1, dtype_kind="int")
    if labels.shape != predictions.shape or labels.numel() == 0:
        raise ValueError(f"labels must be non-empty with shape {list(predictions.shape)}, got {list(labels.shape)}")
    return 100.0 * float((predictions.cpu() == labels.cpu()).double().mean())


def zero_shot_accuracy(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (percent) of zero-shot classification; labels long[N] in [0, C)."""
    check_tensor("labels", labels, dims=1, dtype_kind="int")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= class_emb.shape[0]):
        raise ValueError(f"labels must lie in [0, {class_emb.shape[0]}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return top1_accuracy(zero_shot_predictions(image_emb, class_emb), labels)


def encode_classes(model, tokenizer, classes, templates, *, device="cpu", batch_size: int = 64,
                   progress=None) -> torch.Tensor:
    """Template-ensemble class embeddings float[C, d] (every class name in every template)."""
    prompts = [t.format(c) for c in classes for t in templates]
    emb = encode_text_list(model, tokenizer, prompts, device=device, batch_size=batch_size,
                           progress=progress, desc="class prompts")
    return class_embeddings(emb.reshape(len(classes), len(templates), -1))


def evaluate_classification(model, split, tokenizer, *, device="cpu", batch_size: int = 64,
                            progress=None) -> dict:
    """Model level: ``{"top1": percent}`` on a classification split (images, labels, classes, templates)."""
    class_emb = encode_classes(model, tokenizer, split.classes, split.templates, device=device,
                               batch_size=batch_size, progress=progress)
    image_emb = encode_image_array(model, split.images, device=device, batch_size=batch_size,
                                   progress=progress, desc="classification images")
    return {"top1": zero_shot_accuracy(image_emb, class_emb, torch.as_tensor(split.labels, dtype=torch.long))}
