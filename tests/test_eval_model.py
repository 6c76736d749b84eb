"""End to end: a real tiny LoupeModel on a tiny generated ShapesWorld, every task, and the run report.

Retrieval and grounding are recomputed along an independent path (the model's ``embed_only``
forward on collated batches; one expression at a time with Python loops over regions and the
IoU of each box written out), and compared with what ``evaluate`` reports.
"""
import json
import os
import re

import pytest
import torch

from loupe_core.data import ShapesWorldDataset, Tokenizer, collate_batch, prepare_shapesworld
from loupe_core.data.eval_splits import load_grounding_split
from loupe_core.eval import PROTOCOL_TASKS, check_tasks, evaluate
from loupe_core.eval.encode import tokenize
from _trainer_helpers import tiny_model
from loupe_core.objective import LoupeObjective
from loupe_core.viz import write_run_report

from test_eval_metrics import reference_recalls
from test_viz import assert_png


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return prepare_shapesworld(str(tmp_path_factory.mktemp("sw")), image_size=32, num_train=8, num_val=6, num_test=4,
                               num_heldout=5, seed=0, progress=False)


@pytest.fixture(scope="module")
def tokenizer(world):
    return Tokenizer.from_file(world.tokenizer)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer.vocab_size)


@pytest.fixture(scope="module")
def metrics(model, world, tokenizer):
    return evaluate(model, world, tokenizer, tasks=("all",), batch_size=4, progress=False)


def test_every_task_reports_percentages(metrics):
    expected = {"retrieval/i2t_r1", "retrieval/t2i_r10", "retrieval/rsum", "grounding/acc@0.5", "detection/map@0.3",
                "detection/map@0.5", "classification/shape_top1", "classification/colour_shape_top1",
                "linear_probe/top1"}
    assert expected <= set(metrics)
    for name, value in metrics.items():
        assert isinstance(value, float) and value == value
        assert 0.0 <= value <= (600.0 if name.endswith("rsum") else 100.0), name


def test_retrieval_matches_embed_only_forward(model, world, tokenizer, metrics):
    data = ShapesWorldDataset(world, "heldout", tokenizer)
    batch = collate_batch([data[i] for i in range(len(data))])
    with torch.no_grad():
        img, txt = LoupeObjective(model)(batch, embed_only=True)
    per = data.captions_per_image
    sim = (img[::per] @ txt.T).tolist()
    want = reference_recalls(sim, [i // per for i in range(len(data))])
    for key, value in want.items():
        assert metrics[f"retrieval/{key}"] == pytest.approx(value), key


def test_grounding_matches_per_expression_loop(model, world, tokenizer, metrics):
    split = load_grounding_split(world.heldout.grounding, image_size=32)
    from loupe_core.data import normalize_image

    hits = strict_hits = 0
    with torch.no_grad():
        for expr, owner, gt in zip(split.expressions, split.expression_image, split.boxes.tolist()):
            regions = model.propose_regions(model.encode_images(normalize_image(split.images[owner:owner + 1])), 3)
            ids, mask = tokenize(tokenizer, [expr], 24)
            text = model.encode_texts(ids, mask).global_emb[0]
            scores = [float(regions.emb[0, k] @ text) for k in range(3)]
            x0, y0, x1, y1 = regions.boxes[0, scores.index(max(scores))].tolist()
            iw, ih = max(0.0, min(x1, gt[2]) - max(x0, gt[0])), max(0.0, min(y1, gt[3]) - max(y0, gt[1]))
            inter = iw * ih
            union = (x1 - x0) * (y1 - y0) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
            hits += inter / union >= 0.5
            strict_hits += inter / union >= 0.7
    assert metrics["grounding/acc@0.5"] == pytest.approx(100.0 * hits / len(split.expressions))
    assert metrics["grounding/acc@0.7"] == pytest.approx(100.0 * strict_hits / len(split.expressions))


def test_evaluate_is_deterministic_and_accepts_a_dict(model, world, tokenizer, metrics):
    files = {"retrieval": world.heldout.retrieval, "grounding": world.heldout.grounding}
    again = evaluate(model, files, tokenizer, batch_size=3, progress=False)
    assert again == {k: metrics[k] for k in again}
    assert set(again) == {k for k in metrics if k.split("/")[0] in ("retrieval", "grounding")}


def test_bad_tasks_and_paths(model, world, tokenizer):
    assert check_tasks("all") == PROTOCOL_TASKS
    with pytest.raises(ValueError, match="tasks must be names"):
        check_tasks(("retrieval", "segmentation"))
    with pytest.raises(ValueError, match="no 'detection' file"):
        evaluate(model, {"retrieval": world.heldout.retrieval}, tokenizer, tasks=("detection",))
    with pytest.raises(TypeError, match="eval_paths"):
        evaluate(model, 42, tokenizer)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, world, tokenizer, tasks=("retrieval",), batch_size=0)


def test_run_report_pictures_and_html(model, world, tokenizer, metrics, tmp_path):
    history = tmp_path / "metrics.jsonl"
    history.write_text("".join(json.dumps({"step": s, "loss": 3.0 - 0.1 * s, "loss/cmc": 2.0 - 0.1 * s}) + "\n"
                               for s in range(1, 6)))
    index = write_run_report(str(tmp_path), model=model, tokenizer=tokenizer, eval_paths=world, metrics=metrics,
                             history_path=str(history), num_samples=4, sample_counts=(4, 16), seeds=(0, 1))
    assert index == os.path.join(str(tmp_path), "report", "index.html")
    page = open(index).read()
    pictures = re.findall(r"src='([^']+\.png)'", page)
    assert {"training_curves.png", "regions_0.png", "alignment_0.png", "regions_1.png", "instability.png"} <= set(pictures)
    for name in pictures:
        assert_png(os.path.join(str(tmp_path), "report", name))
    assert "retrieval/i2t_r1" in page


def test_texts_without_tokens_and_padding_do_not_leak(model, tokenizer):
    from loupe_core.eval.encode import encode_text_list

    alone = encode_text_list(model, tokenizer, ["", "the red circle"], batch_size=1, progress=False)
    batched = encode_text_list(model, tokenizer, ["", "the red circle"], batch_size=2, progress=False)
    assert torch.isfinite(alone).all()
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.norm(dim=1), torch.ones(2))
