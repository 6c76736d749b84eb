"""The harder ShapesWorld grounding splits (docs/CONTRACTS.md s6): each scene has the property its
split names, checked from the written files with parsers and geometry written here from the
definitions (not the generator's helpers), plus disjointness from training, determinism, bad input
and the model-level scoring."""
import json
import os
import re

import numpy as np
import pytest
import torch

from loupe_core.data import Tokenizer, load_grounding_split, prepare_shapesworld
from loupe_core.data.shapesworld_hard import HARD_SPLITS, generate_hard_split, prepare_hard_splits
from loupe_core.data.shapesworld_render import COLOUR_NAMES, SHAPES
from loupe_core.eval.hard_splits import evaluate_hard_splits
from _trainer_helpers import tiny_model

SIZE = 32
NUM = 40
EXPRESSION = re.compile(r"^the (?:(?:small|tiny|large|big|striped) )*(\w+) (\w+)(?: (.+?) the "
                        r"(?:(?:small|tiny|large|big|striped) )*(\w+) (\w+))?$")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return prepare_shapesworld(str(tmp_path_factory.mktemp("sw")), image_size=SIZE, num_train=30, num_val=4,
                               num_test=4, num_heldout=4, seed=5, progress=False)


@pytest.fixture(scope="module")
def hard(world):
    return prepare_hard_splits(world, NUM)


def _read(files):
    """(grounding JSON, annotation records) of one written split."""
    folder = os.path.dirname(files["grounding"])
    with open(files["grounding"]) as f:
        grounding = json.load(f)
    with open(os.path.join(folder, "annotations.json")) as f:
        return grounding, json.load(f)


def _refs_by_image(grounding):
    out = {}
    for ref in grounding["refs"]:
        out.setdefault(ref["image_id"] - 1, []).append(ref)
    return out


def _xywh(obj):
    x1, y1, x2, y2 = obj["box"]
    return [x1, y1, x2 - x1, y2 - y1]


def _parse(sentence):
    match = EXPRESSION.match(sentence)
    assert match, sentence
    colour, shape, rel, anchor_colour, anchor_shape = match.groups()
    assert colour in COLOUR_NAMES and shape in SHAPES, sentence
    return (colour, shape), rel, (anchor_colour, anchor_shape) if rel else None


def _relation(a, b):
    """The captions' relation written from its definition: the dominant axis of a's offset from b."""
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _pairs(objects):
    return [(o["colour"], o["shape"]) for o in objects]


def _referred(ref, objects):
    hits = [k for k, o in enumerate(objects) if _xywh(o) == ref["bbox"]]
    assert hits, ref
    return hits


def test_every_split_is_written_and_loads(hard):
    assert tuple(hard) == HARD_SPLITS
    for name, files in hard.items():
        split = load_grounding_split(files["grounding"], image_size=SIZE)
        grounding, records = _read(files)
        assert len(split.images) == len(records) == NUM, name
        assert len(split.expressions) == sum(len(r["sentences"]) for r in grounding["refs"]) > 0
        assert split.images.shape == (NUM, SIZE, SIZE, 3)


def _scenes_with_plain_refs(files, low, high):
    """(objects, [(colour, shape) named, ref]) per scene of a split whose every object has one
    plain "the <colour> <shape>" expression, after checking the object count is in [low, high]."""
    grounding, records = _read(files)
    refs = _refs_by_image(grounding)
    for i, rec in enumerate(records):
        objects = rec["objects"]
        assert low <= len(objects) <= high and len(refs[i]) == len(objects)  # every object is referred to
        named = []
        for ref in refs[i]:
            pair, rel, _ = _parse(ref["sentences"][0]["sent"])
            assert rel is None
            named.append((pair, ref))
        yield objects, named


def test_shape_decides_one_colour_distinct_shapes(hard):
    for objects, named in _scenes_with_plain_refs(hard["shape_decides"], 3, 4):
        assert len({o["colour"] for o in objects}) == 1
        assert len({o["shape"] for o in objects}) == len(objects)
        for (colour, shape), ref in named:
            assert sum(o["colour"] == colour for o in objects) == len(objects)  # the colour names all
            by_shape = [k for k, o in enumerate(objects) if o["shape"] == shape]
            assert by_shape == _referred(ref, objects)  # the shape names the referent alone


def test_crowded_six_to_eight_distinct_objects(hard):
    for objects, named in _scenes_with_plain_refs(hard["crowded"], 6, 8):
        assert len(set(_pairs(objects))) == len(objects)
        for pair, ref in named:
            assert [k for k, p in enumerate(_pairs(objects)) if p == pair] == _referred(ref, objects)


def test_relational_needs_the_second_object(hard):
    grounding, records = _read(hard["relational"])
    refs = _refs_by_image(grounding)
    for i, rec in enumerate(records):
        objects = rec["objects"]
        assert 3 <= len(objects) <= 4
        assert len(refs[i]) == 2  # the two twins
        for ref in refs[i]:
            pair, rel, anchor_pair = _parse(ref["sentences"][0]["sent"])
            first_phrase = [k for k, p in enumerate(_pairs(objects)) if p == pair]
            assert len(first_phrase) == 2  # the first noun phrase alone is ambiguous
            a, b = (objects[k] for k in first_phrase)
            assert (a["size"], a["striped"], a["radius"]) == (b["size"], b["striped"], b["radius"])
            anchors = [o for o, p in zip(objects, _pairs(objects)) if p == anchor_pair]
            assert len(anchors) == 1 and anchor_pair != pair
            resolved = [k for k in first_phrase if _relation(objects[k], anchors[0]) == rel]
            referred = _referred(ref, objects)
            assert len(resolved) == 1 and resolved[0] in referred  # the relation picks exactly one twin
        assert len({tuple(ref["bbox"]) for ref in refs[i]}) == 2


def test_odd_sizes_lie_outside_the_training_sizes(hard, world):
    _, records = _read(hard["odd_sizes"])
    fractions = np.array([o["radius"] / SIZE for r in records for o in r["objects"]])
    assert len(fractions) >= NUM
    small, large = (fractions >= 0.05) & (fractions <= 0.075), (fractions >= 0.19) & (fractions <= 0.23)
    assert (small | large).all() and small.any() and large.any()
    with open(world.train.annotations) as f:
        train = {round(o["radius"] / SIZE, 6) for r in json.load(f) for o in r["objects"]}
    assert train == {0.09, 0.16} and not train & {round(x, 6) for x in fractions.tolist()}
    for rec in records:
        for o in rec["objects"]:  # the rendered box spans about the object's diameter
            x1, y1, x2, y2 = o["box"]
            assert max(x2 - x1, y2 - y1) <= 2 * o["radius"] + 2


def test_scenes_avoid_heldout_pairs_and_training_images(hard, world):
    held = {tuple(p) for p in world.load_metadata()["heldout_pairs"]}
    train_images = np.load(world.train.images)
    train_bytes = {img.tobytes() for img in train_images}
    for name, files in hard.items():
        _, records = _read(files)
        assert not held & {p for r in records for p in _pairs(r["objects"])}, name
        images = load_grounding_split(files["grounding"]).images
        assert not train_bytes & {img.tobytes() for img in images}, name


def test_generation_is_deterministic_and_splits_differ(world):
    meta = world.load_metadata()
    pairs = [(c, s) for s in SHAPES for c in COLOUR_NAMES]
    a = generate_hard_split("crowded", 3, image_size=SIZE, seed=meta["params"]["seed"], pairs=pairs)
    b = generate_hard_split("crowded", 3, image_size=SIZE, seed=meta["params"]["seed"], pairs=pairs)
    c = generate_hard_split("crowded", 3, image_size=SIZE, seed=meta["params"]["seed"] + 1, pairs=pairs)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_reused_when_there(world, hard):
    before = os.path.getmtime(hard["fresh"]["grounding"])
    again = prepare_hard_splits(world, NUM, ("fresh",))
    assert again["fresh"] == hard["fresh"] and os.path.getmtime(again["fresh"]["grounding"]) == before
    assert not [n for n in os.listdir(os.path.dirname(os.path.dirname(again["fresh"]["grounding"])))
                if n.startswith(".")]


@pytest.mark.parametrize("kwargs, word", [({"num": 0}, "num"), ({"names": ("colour_decides",)}, "names")])
def test_bad_arguments_name_the_argument(world, kwargs, word):
    with pytest.raises(ValueError, match=word):
        prepare_hard_splits(world, **{"num": 2, **kwargs})


def test_evaluate_hard_splits_reports_each_split(world, hard):
    tokenizer = Tokenizer.from_file(world.tokenizer)
    model = tiny_model(tokenizer.vocab_size)
    files = {name: hard[name] for name in ("shape_decides", "relational")}
    with torch.no_grad():
        metrics = evaluate_hard_splits(model, files, tokenizer, batch_size=16, progress=False)
    for name in files:
        for key in ("grounding/acc@0.5", "grounding/acc@0.7", "diagnostics/diag_truebox_phrase",
                    "diagnostics/diag_recall_oracle", "diagnostics/diag_recall_oracle_strict"):
            value = metrics[f"hard_{name}/{key}"]
            assert 0.0 <= value <= 100.0, (name, key)
        assert metrics[f"hard_{name}/grounding/acc@0.7"] <= metrics[f"hard_{name}/grounding/acc@0.5"]
    assert metrics["hard_relational/diagnostics/diag_truebox_chance"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="tasks"):
        evaluate_hard_splits(model, files, tokenizer, tasks=("retrieval",))


def test_pretrain_reports_the_hard_splits(tmp_path):
    """A pretraining with ``eval.hard_splits`` scores them after its final evaluation."""
    from loupe_core.config import load_config
    from loupe_core.pipeline import pretrain

    cfg = load_config("tiny", [f"data.root={tmp_path / 'data'}", "train.device=cpu", "train.tensorboard=false",
                               "train.steps=1", "train.ckpt_every=0", "eval.report=false",
                               'eval.hard_splits=["crowded","relational"]', "eval.hard_size=3"])
    summary = pretrain(cfg, str(tmp_path / "run"), echo=lambda *_: None)
    metrics = summary["metrics"]
    for name in ("crowded", "relational"):
        assert f"hard_{name}/grounding/acc@0.7" in metrics and f"hard_{name}/diagnostics/diag_truebox_phrase" in metrics
    assert not [k for k in metrics if k.startswith(("hard_fresh", "hard_odd"))]
    assert "grounding/acc@0.7" in metrics and summary["hard_eval_seconds"] > 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/hard_crowded/grounding/acc@0.5" in row for row in logged)


def test_loupe_eval_scores_hard_splits_of_a_run(tmp_path, capsys):
    """``loupe eval --hard-splits`` adds the named splits' metrics, equal to ``evaluate_hard_splits``."""
    from loupe_core.cli import main
    from loupe_core.pipeline import load_run, resolve_data, resolve_hard_files
    from _trainer_helpers import write_tiny_checkpoint

    run = write_tiny_checkpoint(tmp_path, 2)
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", run, "--task", "grounding", "--out", str(out), "--no-pictures",
                 "--hard-splits", "crowded", "--num-hard", "3", "--batch-size", "4"]) == 0
    saved = json.loads((out / "metrics.json").read_text())["metrics"]
    objective, cfg, _, _ = load_run(run, "cpu")
    tokenizer, _ = resolve_data(cfg, None, None)
    with torch.no_grad():
        want = evaluate_hard_splits(objective.model, resolve_hard_files(cfg, None, ("crowded",), 3), tokenizer,
                                    batch_size=5, objective=objective, progress=False)
    assert {k: v for k, v in saved.items() if k.startswith("hard_")} == pytest.approx(want)
    assert main(["eval", "--checkpoint", run, "--task", "grounding", "--no-pictures",
                 "--hard-splits", "colourful"]) == 2
    assert "names must be from" in capsys.readouterr().err
