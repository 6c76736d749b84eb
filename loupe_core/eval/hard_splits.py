"""Grounding and diagnostics on the harder ShapesWorld splits (docs/CONTRACTS.md s6).

:func:`evaluate_hard_splits` scores a model on each split's ``grounding.json``
(``loupe_core.data.shapesworld_hard``): ``grounding.evaluate_grounding`` (acc@0.5 and the strict
acc@0.7) and the cheap parts of ``diagnostics.evaluate_diagnostics`` (true-box grounding, proposal
recall and oracle, the alignment-game label AUCs; no token-level sampling:
``num_label_images=0``). Keys: ``hard_<split>/grounding/acc@0.5``,
``hard_<split>/diagnostics/diag_truebox_phrase``, ...
"""
from __future__ import annotations

from typing import Optional

from ..objective import LoupeObjective
from . import splits
from .diagnostics import evaluate_diagnostics
from .grounding import evaluate_grounding

HARD_TASKS = ("grounding", "diagnostics")


def evaluate_hard_splits(model, hard_files: dict, tokenizer, *, tasks=HARD_TASKS, device="cpu",
                         batch_size: int = 64, progress: Optional[bool] = None, objective=None) -> dict[str, float]:
    """{"hard_<split>/<task>/<metric>": value} for each split of ``hard_files``.

    model: a ``LoupeModel`` on ``device``; hard_files: {split name: {"grounding": JSON path}}
    (``prepare_hard_splits``); tasks: from ``HARD_TASKS``; objective: the ``LoupeObjective`` the
    model was trained with (for the diagnostics; None: the default loss configuration).
    """
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in HARD_TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be names from {list(HARD_TASKS)}, got {list(tasks)}")
    common = dict(device=device, batch_size=batch_size, progress=progress)
    out: dict[str, float] = {}
    for name, files in hard_files.items():
        split = splits.load("grounding", splits.require(files, "grounding"), model.config.image_size)
        metrics = {}
        if "grounding" in tasks:
            metrics["grounding"] = evaluate_grounding(model, split, tokenizer, top_k=model.config.top_k, **common)
        if "diagnostics" in tasks:
            metrics["diagnostics"] = evaluate_diagnostics(objective or LoupeObjective(model), split, tokenizer,
                                                          num_label_images=0, **common)
        for task, values in metrics.items():
            out.update({f"hard_{name}/{task}/{k}": float(v) for k, v in values.items()})
    return out
