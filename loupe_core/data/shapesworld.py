"""The embedded ShapesWorld dataset: generation on first use, file layout, training Dataset.

Layout under the root (one directory per parameter set, ``shapesworld-<hash>``)::

    metadata.json              parameters, held-out (colour, shape) pairs, shapes, colours
    tokenizer.json             WordPiece vocabulary trained on the training captions
    <split>/images.npy         uint8 [N, S, S, 3] (memory-mapped when read)
    <split>/annotations.json   per image: key, background, objects (shape, colour, size, striped,
                               cx, cy, radius, box xyxy pixels with x2/y2 exclusive), captions
                               (text, refs = gold object phrase spans + object index, phrases =
                               spans from the noun-phrase chunker, the only spans training sees)
    val|test|heldout/...       also the evaluation files of ``shapesworld_eval``

Splits: train (1 caption per image), val, test, heldout (5 captions per image). The held-out
(colour, shape) pairs never occur in train/val/test; every heldout image holds at least one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..progress import progress as progress_report
from .batch import make_sample
from .phrases import extract_noun_phrases
from .shapesworld_captions import STYLES, make_caption
from .shapesworld_eval import EVAL_FILES, write_eval_files
from .shapesworld_render import COLOUR_NAMES, SHAPES
from .shapesworld_scenes import ALL_PAIRS, heldout_pairs, render, sample_scene
from .tokenizer import Tokenizer

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test", "heldout")
EVAL_SPLITS = ("val", "test", "heldout")
EVAL_CAPTIONS = 5
NUM_HELDOUT_PAIRS = 6
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class SplitFiles:
    """Files of one split; the evaluation JSON paths are None for train."""

    dir: str
    images: str
    annotations: str
    retrieval: Optional[str] = None
    detection: Optional[str] = None
    grounding: Optional[str] = None
    classification_shape: Optional[str] = None
    classification_colour_shape: Optional[str] = None

    @classmethod
    def at(cls, split_dir: str, with_eval: bool) -> "SplitFiles":
        extra = {t: os.path.join(split_dir, f"{t}.json") for t in EVAL_FILES} if with_eval else {}
        return cls(split_dir, os.path.join(split_dir, "images.npy"),
                   os.path.join(split_dir, "annotations.json"), **extra)

    def eval_files(self) -> dict[str, str]:
        """{task: JSON path} for the evaluators (empty for train)."""
        return {t: getattr(self, t) for t in EVAL_FILES if getattr(self, t) is not None}


@dataclass(frozen=True)
class ShapesWorldPaths:
    """Where a generated ShapesWorld lives (``ShapesWorldPaths.at(root)`` rebuilds it from the root)."""

    root: str
    metadata: str
    tokenizer: str
    train: SplitFiles
    val: SplitFiles
    test: SplitFiles
    heldout: SplitFiles

    @classmethod
    def at(cls, root: str) -> "ShapesWorldPaths":
        splits = {s: SplitFiles.at(os.path.join(root, s), s in EVAL_SPLITS) for s in SPLITS}
        return cls(root, os.path.join(root, "metadata.json"), os.path.join(root, "tokenizer.json"), **splits)

    def split(self, name: str) -> SplitFiles:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {name!r}")
        return getattr(self, name)

    def load_metadata(self) -> dict:
        with open(self.metadata) as f:
            return json.load(f)


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def default_cache_dir() -> str:
    """``$LOUPE_CACHE`` or ``~/.cache/loupe``."""
    return os.environ.get("LOUPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "loupe")


def _record(key: str, scene: dict, captions: list[dict]) -> dict:
    return {"key": key, "background": scene["background"], "objects": scene["objects"], "captions": captions}


def _captions(scene: dict, rng: np.random.Generator, count: int) -> list[dict]:
    """``count`` captions; with several, the styles cycle from a random start (varied wording)."""
    if count == 1:
        return [make_caption(scene, rng)]
    first = int(rng.integers(len(STYLES)))
    return [make_caption(scene, rng, STYLES[(first + k) % len(STYLES)]) for k in range(count)]


def generate_split(split: str, num: int, *, image_size: int, seed: int, progress: bool = False):
    """Scenes of one split: (uint8 images ``[num, S, S, 3]``, annotation records, rng).

    The held-out pairs come from ``heldout_pairs(seed)``; train/val/test avoid them, every heldout
    scene's first object takes one. Records hold the chunker's ``phrases`` for each caption.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split)]))
    held = heldout_pairs(seed, NUM_HELDOUT_PAIRS)
    allowed = [p for p in ALL_PAIRS if p not in held]
    count = 1 if split == "train" else EVAL_CAPTIONS
    records, scenes = [], []
    for _ in progress_report(range(num), desc=f"ShapesWorld {split}", enabled=progress, leave=False):
        if split == "heldout":
            scene = sample_scene(rng, image_size, list(ALL_PAIRS), first_pair=held[int(rng.integers(len(held)))])
        else:
            scene = sample_scene(rng, image_size, allowed)
        scenes.append(scene)
    images = render(rng, scenes, image_size)
    for i, scene in enumerate(scenes):
        records.append(_record(f"{split}_{i:06d}", scene, _captions(scene, rng, count)))
    for rec in progress_report(records, desc=f"ShapesWorld {split} phrases", enabled=progress, leave=False):
        for cap in rec["captions"]:
            cap["phrases"] = [list(s) for s in extract_noun_phrases(cap["text"])]
    return images, records, rng


def _class_scenes(split: str, num: int, rng: np.random.Generator, image_size: int, seed: int):
    """Single-object scenes for zero-shot classification, (colour, shape) pairs in turn."""
    held = heldout_pairs(seed, NUM_HELDOUT_PAIRS)
    pairs = held if split == "heldout" else [p for p in ALL_PAIRS if p not in held]
    order = rng.permutation(len(pairs))
    scenes = [sample_scene(rng, image_size, pairs, first_pair=pairs[order[i % len(pairs)]], num_objects=1)
              for i in range(num)]
    images = render(rng, scenes, image_size)
    return images, [_record(f"{split}_cls_{i:06d}", s, []) for i, s in enumerate(scenes)]


def _write_split(root: str, split: str, num: int, image_size: int, seed: int, progress: bool) -> list[dict]:
    files = SplitFiles.at(os.path.join(root, split), split in EVAL_SPLITS)
    os.makedirs(files.dir)
    images, records, rng = generate_split(split, num, image_size=image_size, seed=seed, progress=progress)
    np.save(files.images, images)
    with open(files.annotations, "w") as f:
        json.dump(records, f)
    if split in EVAL_SPLITS:
        class_images, class_records = _class_scenes(split, num, rng, image_size, seed)
        write_eval_files(files.dir, split, images, records, class_images, class_records, rng)
    return records


def _params_hash(params: dict) -> str:
    blob = json.dumps({**params, "version": GENERATOR_VERSION}, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def prepare_shapesworld(cache_dir: Optional[str] = None, *, image_size: int = 64, num_train: int = 4000,
                        num_val: int = 200, num_test: int = 200, num_heldout: int = 200, seed: int = 0,
                        progress: bool = True) -> ShapesWorldPaths:
    """Generate ShapesWorld once and return its paths (reused when already there).

    The data goes to ``<cache_dir>/shapesworld-<hash of the parameters>`` (cache_dir default:
    ``default_cache_dir()``). Generation writes to a temporary directory beside it and renames
    it into place, so a half-written dataset is never seen; concurrent callers both succeed.
    """
    params = {"image_size": _check_count("image_size", image_size, MIN_IMAGE_SIZE),
              "num_train": _check_count("num_train", num_train, 1),
              "num_val": _check_count("num_val", num_val, 1),
              "num_test": _check_count("num_test", num_test, 1),
              "num_heldout": _check_count("num_heldout", num_heldout, 1),
              "seed": _check_count("seed", seed, 0)}
    parent = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    root = os.path.join(parent, f"shapesworld-{_params_hash(params)}")
    if os.path.isdir(root):
        return ShapesWorldPaths.at(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".shapesworld-tmp-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        train_records = []
        sizes = {"train": num_train, "val": num_val, "test": num_test, "heldout": num_heldout}
        for split in progress_report(SPLITS, desc="ShapesWorld", enabled=progress):
            records = _write_split(tmp, split, sizes[split], image_size, seed, progress)
            if split == "train":
                train_records = records
        captions = [c["text"] for r in train_records for c in r["captions"]]
        Tokenizer.train(captions).save(os.path.join(tmp, "tokenizer.json"))
        metadata = {"params": params, "version": GENERATOR_VERSION, "shapes": list(SHAPES),
                    "colours": list(COLOUR_NAMES), "heldout_pairs": [list(p) for p in heldout_pairs(seed, NUM_HELDOUT_PAIRS)],
                    "box_format": "xyxy pixels, x2/y2 exclusive (annotations); COCO xywh (evaluation JSON)"}
        with open(os.path.join(tmp, "metadata.json"), "w") as f:
            json.dump(metadata, f, indent=1)
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.isdir(root):  # not a lost race: a real failure
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return ShapesWorldPaths.at(root)


class ShapesWorldDataset(torch.utils.data.Dataset):
    """Map-style dataset of (image, caption) pairs of one split, as ``make_sample`` dicts.

    Item ``i`` is caption ``i % C`` of image ``i // C`` (C = captions per image: 1 for train, 5
    otherwise); images are read from the memory-mapped ``images.npy``. Phrases are the
    chunker's spans (never the gold annotations). tokenizer: None loads the dataset's own.
    """

    def __init__(self, paths: ShapesWorldPaths, split: str = "train", tokenizer: Optional[Tokenizer] = None):
        files = paths.split(split)
        self.tokenizer = Tokenizer.from_file(paths.tokenizer) if tokenizer is None else tokenizer
        self.images = np.load(files.images, mmap_mode="r")
        with open(files.annotations) as f:
            self.records = json.load(f)
        self.captions_per_image = len(self.records[0]["captions"])

    def __len__(self) -> int:
        return len(self.records) * self.captions_per_image

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        image_index, caption_index = divmod(index, self.captions_per_image)
        rec = self.records[image_index]
        cap = rec["captions"][caption_index]
        return make_sample(self.images[image_index], cap["text"], cap["phrases"],
                           f"{rec['key']}/{caption_index}", self.tokenizer)
