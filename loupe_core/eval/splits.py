"""Which evaluation files a run is scored on, and loading them through ``loupe_core.data.eval_splits``.

``eval_paths`` is a ``loupe_core.data.ShapesWorldPaths`` (the ``heldout`` split is scored, and
the linear probe trains on the ``val`` split's classification images), a ``SplitFiles``, or a
dict {task: JSON path} for real data (CONTRACTS s4 formats). Task keys: ``retrieval``,
``detection``, ``grounding``, ``classification`` or ``classification_<name>`` (several
classification sets), and for the linear probe ``linear_probe_train`` / ``linear_probe_test``
(classification JSON files with the same classes), and for the few-shot task ``fewshot_support``
/ ``fewshot_query`` (the same pair on ShapesWorld: support images never come from the scored split).
"""
from __future__ import annotations

import os

from loupe_core.data import ShapesWorldPaths, SplitFiles, eval_splits
from loupe_core.errors import DataError

EVAL_SPLIT = "heldout"
PROBE_TRAIN_SPLIT = "val"


def shapesworld_files(paths, split: str = EVAL_SPLIT) -> dict[str, str]:
    """{task: JSON path} of a ShapesWorld split, plus the linear probe's (and few-shot task's)
    pair of classification files: it trains on (draws its support set from) the ``val`` split's
    shape classification (``test``'s when ``split`` is ``val``) and tests on ``split``'s."""
    files = dict(paths.split(split).eval_files())
    train = paths.split("test" if split == PROBE_TRAIN_SPLIT else PROBE_TRAIN_SPLIT).eval_files()
    if "classification_shape" in train and "classification_shape" in files:
        files["linear_probe_train"] = files["fewshot_support"] = train["classification_shape"]
        files["linear_probe_test"] = files["fewshot_query"] = files["classification_shape"]
    return files


def eval_files(eval_paths) -> dict[str, str]:
    """{task: JSON path} of the evaluation split (see the module docstring)."""
    if isinstance(eval_paths, ShapesWorldPaths):
        return shapesworld_files(eval_paths)
    if isinstance(eval_paths, SplitFiles):
        return dict(eval_paths.eval_files())
    if isinstance(eval_paths, dict):
        for task, path in eval_paths.items():
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"eval_paths[{task!r}] must be a path, got {type(path).__name__}")
        return {task: os.fspath(path) for task, path in eval_paths.items()}
    raise TypeError(f"eval_paths must be ShapesWorldPaths, SplitFiles or a dict of task -> JSON path, "
                    f"got {type(eval_paths).__name__}")


def classification_sets(files: dict) -> dict[str, str]:
    """{metric prefix: path} of the classification files: ``classification_shape`` -> ``shape_``."""
    out = {}
    for key, path in files.items():
        if key == "classification":
            out[""] = path
        elif key.startswith("classification_"):
            out[key[len("classification_"):] + "_"] = path
    return out


TASK_FILES = {"retrieval": ("retrieval",), "detection": ("detection",), "grounding": ("grounding",),
              "diagnostics": ("grounding",), "fewshot": ("fewshot_support", "fewshot_query"),
              "linear_probe": ("linear_probe_train", "linear_probe_test")}
"""The ``eval_paths`` keys each task reads (classification: any of ``classification_sets``)."""


def check_eval_files(eval_paths, tasks) -> None:
    """DataError naming the task and the key or path when a file that ``tasks`` read is not named
    in ``eval_paths`` or is not there: checked before a run trains, not found after it."""
    files = eval_files(eval_paths)
    for task in tasks:
        if task == "classification":
            paths = list(classification_sets(files).values())
            if not paths:
                raise DataError(f"eval.tasks has 'classification' but eval_paths has no classification file "
                                f"(has {sorted(files)})")
        else:
            paths = []
            for key in TASK_FILES[task]:
                if key not in files:
                    raise DataError(f"eval.tasks has {task!r} but eval_paths has no {key!r} file (has {sorted(files)})")
                paths.append(files[key])
        for path in paths:
            if not os.path.isfile(path):
                raise DataError(f"eval.tasks has {task!r}: its evaluation file {path!r} does not exist")


def require(files: dict, key: str) -> str:
    if key not in files:
        raise ValueError(f"eval_paths has no {key!r} file (has {sorted(files)})")
    return files[key]


def load(task: str, path: str, image_size: int):
    """The split object of ``task`` ("retrieval", "classification", "detection", "grounding") at ``path``."""
    loaders = {"retrieval": eval_splits.load_retrieval_split, "classification": eval_splits.load_classification_split,
               "detection": eval_splits.load_detection_split, "grounding": eval_splits.load_grounding_split}
    return loaders[task](path, image_size=image_size)


def load_split(eval_paths, task: str, image_size: int):
    """Load ``task``'s file of ``eval_paths`` (classification: the first classification set)."""
    files = eval_files(eval_paths)
    if task == "classification":
        sets = classification_sets(files)
        if not sets:
            raise ValueError(f"eval_paths has no classification file (has {sorted(files)})")
        return load(task, next(iter(sets.values())), image_size)
    return load(task, require(files, task), image_size)
