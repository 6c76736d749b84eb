"""Zero-shot evaluation of LOUPE (spec section 7): retrieval, classification, detection, grounding,
linear probe; plus the alignment diagnostics (``diagnostics``: why the model grounds or not).

Each task has a tensor-level metric (tested against references written from the definitions)
and a model-level function that runs the model (CONTRACTS s5 methods) on a split in batches
under ``torch.inference_mode``. :func:`evaluate` runs several tasks and returns flat metric
names such as ``retrieval/i2t_r1``, ``grounding/acc@0.5``, ``detection/map@0.5``,
``diagnostics/diag_truebox_cls``, ``fewshot/tip_adapter_k4``. "all" runs the evaluation protocols
(``PROTOCOL_TASKS``); the diagnostics (slower, partly not percentages) and the few-shot
adaptation (Tip-Adapter and CoOp on K-shot support sets: ``fewshot``) run only when named.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..objective import LoupeObjective
from . import splits
from .classification import evaluate_classification
from .detection import evaluate_detection
from .diagnostics import evaluate_diagnostics
from .fewshot import evaluate_fewshot
from .grounding import evaluate_grounding
from .linear_probe import evaluate_linear_probe
from .retrieval import evaluate_retrieval

PROTOCOL_TASKS = ("retrieval", "classification", "detection", "grounding", "linear_probe")
EXTRA_TASKS = ("diagnostics", "fewshot")  # run only when named
TASKS = PROTOCOL_TASKS + EXTRA_TASKS


def check_tasks(tasks) -> tuple[str, ...]:
    """Tuple of task names; "all" expands to ``PROTOCOL_TASKS`` (every task but the diagnostics
    and the few-shot adaptation); an unknown name is a ValueError."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    if "all" in tasks:
        return PROTOCOL_TASKS + tuple(t for t in EXTRA_TASKS if t in tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be names from {list(TASKS) + ['all']}, got {list(tasks)}")
    return tasks


def evaluate(model, eval_paths, tokenizer, tasks: Sequence[str] = ("retrieval", "grounding"), device="cpu",
             batch_size: int = 64, progress: Optional[bool] = None, objective=None) -> dict[str, float]:
    """Run ``tasks`` on the evaluation files; returns {"<task>/<metric>": value (percent; the
    diagnostics' AUCs and correlations as they are)}.

    model: a ``LoupeModel`` already on ``device``; eval_paths: ``ShapesWorldPaths``,
    ``SplitFiles`` or {task: JSON path} (see ``loupe_core.eval.splits``); tokenizer:
    ``loupe_core.data.Tokenizer``. Regions: the model's ``config.top_k`` per image. The
    diagnostics run on the grounding file (``evaluate_diagnostics``, its default sample) with
    ``objective``, the ``LoupeObjective`` the model was trained with (None: the default loss
    configuration, no UNSIL); the few-shot task draws its support sets from ``fewshot_support``
    and scores ``fewshot_query`` (``evaluate_fewshot``, its default shots and seeds).
    """
    tasks = check_tasks(tasks)
    files = splits.eval_files(eval_paths)
    size = model.config.image_size
    common = dict(device=device, batch_size=batch_size, progress=progress)
    top_k = model.config.top_k
    out: dict[str, float] = {}

    def add(task, metrics):
        out.update({f"{task}/{k}": float(v) for k, v in metrics.items()})

    for task in tasks:
        if task == "retrieval":
            add(task, evaluate_retrieval(model, splits.load(task, splits.require(files, task), size), tokenizer,
                                         **common))
        elif task == "classification":
            sets = splits.classification_sets(files)
            if not sets:
                raise ValueError(f"eval_paths has no classification file (has {sorted(files)})")
            for prefix, path in sets.items():
                result = evaluate_classification(model, splits.load(task, path, size), tokenizer, **common)
                add(task, {prefix + k: v for k, v in result.items()})
        elif task == "detection":
            add(task, evaluate_detection(model, splits.load(task, splits.require(files, task), size), tokenizer,
                                         top_k=top_k, **common))
        elif task == "grounding":
            add(task, evaluate_grounding(model, splits.load(task, splits.require(files, task), size), tokenizer,
                                         top_k=top_k, **common))
        elif task == "diagnostics":
            add(task, evaluate_diagnostics(objective or LoupeObjective(model), splits.load("grounding", splits.require(files, "grounding"), size),
                                           tokenizer, **common))
        elif task == "fewshot":
            support = splits.load("classification", splits.require(files, "fewshot_support"), size)
            query = splits.load("classification", splits.require(files, "fewshot_query"), size)
            add(task, evaluate_fewshot(model, support, query, tokenizer, **common))
        else:
            train = splits.load("classification", splits.require(files, "linear_probe_train"), size)
            test = splits.load("classification", splits.require(files, "linear_probe_test"), size)
            add(task, evaluate_linear_probe(model, train, test, **common))
    return out


__all__ = ["TASKS", "PROTOCOL_TASKS", "evaluate", "check_tasks", "evaluate_retrieval", "evaluate_classification",
           "evaluate_detection", "evaluate_grounding", "evaluate_linear_probe", "evaluate_diagnostics",
           "evaluate_fewshot"]
