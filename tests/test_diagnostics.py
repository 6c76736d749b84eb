"""Alignment diagnostics (loupe_core.eval.diagnostics) against independent references.

Tensor level: hand-built patch embeddings (one unit vector per object, another for the
background), per-cell Python loops for the box cells, brute-force enumeration of every ordering
for the random-ranking recall, hand-counted AUCs, numpy's correlation. Model level: a tiny
untrained model from the "tiny" config on a tiny ShapesWorld, through ``evaluate``, the
``loupe eval`` command and the pretraining run's evaluator.
"""
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loupe_core.config import load_config
from loupe_core.data import Tokenizer
from loupe_core.data.eval_splits import load_grounding_split
from loupe_core.eval import PROTOCOL_TASKS, TASKS, check_tasks, evaluate
from loupe_core.eval import diagnostics as D
from loupe_core.objective import LoupeObjective

from test_eval_cli import run_dir  # noqa: F401  (module fixture: a tiny run with its checkpoint)
from test_eval_model import world  # noqa: F401  (module fixture: a tiny generated ShapesWorld)

KEYS = {"diag_truebox_cls", "diag_truebox_phrase", "diag_truebox_chance", "diag_recall@4", "diag_recall@16",
        "diag_recall@64", "diag_recall_random@4", "diag_recall_random@16", "diag_recall_random@64",
        "diag_recall_oracle", "diag_recall_oracle_strict", "diag_label_auc", "diag_label_auc_interaction",
        "diag_label_auc_negative_interaction", "diag_label_auc_phi", "diag_label_corr", "diag_semantic_gold",
        "diag_semantic_chance", "diag_label_auc_alignment_phi", "diag_label_auc_alignment_excess",
        "diag_label_auc_alignment_shapley_iou"}
UNSIL_KEYS = {"diag_unsil_corr_token", "diag_unsil_corr_semantic"}
PERCENT_KEYS = {k for k in KEYS if "auc" not in k and "corr" not in k}


def _box(x0, y0, x1, y1):
    return [float(x0), float(y0), float(x1), float(y1)]


# ---------------------------------------------------------------- 1. true-box grounding
def test_box_cells_match_a_per_cell_loop_and_fall_back_to_the_centre_cell():
    grid, cell = (4, 5), 8.0
    boxes = torch.tensor([_box(0, 0, 16, 8), _box(3, 3, 21, 30), _box(9, 9, 11, 11), _box(33, 25, 39, 31)])
    got = D.box_cells(boxes, grid, cell)
    for b, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        want = [x0 <= (c + 0.5) * cell < x1 and y0 <= (r + 0.5) * cell < y1 for r in range(4) for c in range(5)]
        if not any(want):  # the cell holding the box centre
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            want = [r == int(cy // cell) and c == int(cx // cell) for r in range(4) for c in range(5)]
        assert got[b].tolist() == want, b
    assert got[2].sum() == 1 and got[2, 1 * 5 + 1]  # (9..11)^2 holds no centre: cell (row 1, col 1)


def _one_hot_scene(rng, num_images, grid=(4, 4), cell=8.0, d=8):
    """Images whose objects are disjoint cell-aligned boxes; patch embeddings = object identity."""
    gh, gw = grid
    patch = torch.zeros(num_images, gh * gw, d)
    patch[:, :, d - 1] = 1.0  # background
    boxes = torch.zeros(num_images, 3, 4)
    mask = torch.zeros(num_images, 3, dtype=torch.bool)
    slots = [(0, 0, 2, 2), (2, 0, 4, 1), (0, 2, 1, 4), (2, 2, 4, 4)]  # (c0, r0, c1, r1), disjoint
    for b in range(num_images):
        n = int(rng.integers(1, 4))
        for o, s in enumerate(rng.permutation(len(slots))[:n]):
            c0, r0, c1, r1 = slots[s]
            boxes[b, o] = torch.tensor(_box(c0 * cell, r0 * cell, c1 * cell, r1 * cell))
            mask[b, o] = True
            for r in range(r0, r1):
                for c in range(c0, c1):
                    patch[b, r * gw + c] = F.one_hot(torch.tensor(o), d).float()
    return patch, boxes, mask


def test_truebox_grounding_is_perfect_with_identity_embeddings_and_chance_with_random_queries():
    rng = np.random.default_rng(0)
    patch, boxes, mask = _one_hot_scene(rng, 400)
    emb = D.box_embeddings(patch, boxes, (4, 4), 8.0)
    torch.testing.assert_close(emb[mask], F.one_hot(mask.nonzero()[:, 1], 8).float())
    owner = torch.arange(400).repeat_interleave(2)
    target = torch.tensor([int(rng.integers(int(mask[i].sum()))) for i in owner.tolist()])
    query = F.one_hot(target, 8).float()
    assert D.truebox_accuracy(emb[owner], mask[owner], query, target) == 100.0
    chance = D.chance_level(mask[owner])
    assert chance == pytest.approx(100.0 * float((1.0 / mask[owner].sum(1).double()).mean()))
    random_query = F.normalize(torch.randn(len(owner), 8, generator=torch.Generator().manual_seed(1)), dim=1)
    assert abs(D.truebox_accuracy(emb[owner], mask[owner], random_query, target) - chance) < 6.0


def test_truebox_accuracy_ignores_absent_boxes_and_takes_the_first_on_ties():
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    query = torch.tensor([[0.0, 1.0]])
    present = torch.tensor([[True, True, True]])
    assert D.truebox_accuracy(emb, present, query, torch.tensor([1])) == 100.0  # tie 1 / 2: the first
    assert D.truebox_accuracy(emb, present, query, torch.tensor([2])) == 0.0
    assert D.truebox_accuracy(emb, torch.tensor([[True, False, True]]), query, torch.tensor([2])) == 100.0
    with pytest.raises(ValueError, match="target"):
        D.truebox_accuracy(emb, torch.tensor([[True, False, True]]), query, torch.tensor([1]))
    with pytest.raises(ValueError, match="query"):
        D.truebox_accuracy(emb, present, torch.zeros(2, 2), torch.tensor([0]))


def test_image_objects_deduplicates_the_refs_of_each_image():
    boxes = [_box(0, 0, 4, 4), _box(0, 0, 4, 4), _box(5, 5, 9, 9), _box(0, 0, 4, 4), _box(1, 1, 2, 2)]
    objects, mask, index = D.image_objects([0, 0, 0, 2, 2], np.asarray(boxes, dtype=np.float32), 3)
    assert mask.tolist() == [[True, True], [False, False], [True, True]]
    assert index.tolist() == [0, 0, 1, 0, 1]
    assert objects[0].tolist() == [boxes[0], boxes[2]] and objects[2].tolist() == [boxes[3], boxes[4]]
    with pytest.raises(ValueError, match="expression_image"):
        D.image_objects([0, 5], np.zeros((2, 4), dtype=np.float32), 3)


# ---------------------------------------------------------------- 2. proposal recall
def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _random_scene(gen, B=6, n=3, P=40, size=32.0):
    def boxes(*shape):
        xy = torch.rand(*shape, 2, generator=gen) * size * 0.7
        wh = 2.0 + torch.rand(*shape, 2, generator=gen) * size * 0.4
        return torch.cat([xy, xy + wh], dim=-1)

    objects = boxes(B, n)
    candidates = torch.cat([boxes(P - 2 * n), objects[0] + 0.5, objects[1] - 0.25])  # some close hits
    mask = torch.rand(B, n, generator=gen) < 0.8
    mask[:, 0] = True
    return candidates, objects, mask


def test_recall_of_a_ranking_by_true_iou_reaches_the_oracle_and_matches_a_loop(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    candidates, objects, mask = _random_scene(gen)
    B, n = mask.shape
    iou = [[[_iou(c, o) for o in objects[b].tolist()] for c in candidates.tolist()] for b in range(B)]
    oracle = D.oracle_recall(candidates, objects, mask)
    want = sum(any(iou[b][p][o] >= 0.5 for p in range(len(candidates))) for b in range(B) for o in range(n)
               if mask[b, o]) / int(mask.sum())
    assert oracle == pytest.approx(100.0 * want)
    # each object's best candidate first, then the rest by their best IoU
    ranked = []
    for b in range(B):
        best = [max(range(len(candidates)), key=lambda p: iou[b][p][o]) for o in range(n) if mask[b, o]]
        rest = sorted(set(range(len(candidates))) - set(best), key=lambda p: -max(iou[b][p]))
        ranked.append(candidates[list(dict.fromkeys(best)) + rest])
    ranked = torch.stack(ranked)
    got = D.proposal_recall(ranked, objects, mask, ks=(n, n + 2, 10 * len(candidates)))
    assert got == {k: pytest.approx(oracle) for k in got}
    # an arbitrary ranking against a loop over its first K boxes
    order = torch.stack([torch.randperm(len(candidates), generator=gen) for _ in range(B)])
    for k, value in D.proposal_recall(candidates[order], objects, mask, ks=(1, 4, 16)).items():
        hits = sum(any(iou[b][int(p)][o] >= 0.5 for p in order[b, :k])
                   for b in range(B) for o in range(n) if mask[b, o])
        assert value == pytest.approx(100.0 * hits / int(mask.sum())), k


def test_random_recall_equals_enumeration_of_every_ordering():
    cell = [_box(8 * i, 0, 8 * i + 8, 8) for i in range(4)]
    candidates = torch.tensor(cell + [_box(0, 0, 16, 8), _box(1, 0, 9, 8)])  # 6 candidates
    objects = torch.tensor([[_box(0, 0, 8, 8), _box(16, 0, 24, 8), _box(0, 0, 32, 32)]])
    mask = torch.tensor([[True, True, True]])
    hit = [[_iou(c, o) >= 0.5 for o in objects[0].tolist()] for c in candidates.tolist()]
    assert [sum(h[o] for h in hit) for o in range(3)] == [3, 1, 0]  # m = 3, 1 and 0 hits
    orders = list(itertools.permutations(range(len(candidates))))
    ks = (1, 2, 3, 6, 9)
    got = D.random_recall(candidates, objects, mask, ks=ks)
    for k in ks:
        found = sum(any(hit[p][o] for p in order[:k]) for order in orders for o in range(3))
        assert got[k] == pytest.approx(100.0 * found / (len(orders) * 3)), k
    # a batch of per-image candidates gives the same as the shared list
    assert D.random_recall(candidates[None], objects, mask, ks=ks) == got
    with pytest.raises(ValueError, match="ks"):
        D.random_recall(candidates, objects, mask, ks=(0,))


# ---------------------------------------------------------------- 3. AUC, correlation, candidates
def test_roc_auc_against_hand_counted_pairs():
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered right
    assert D.roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True])) == 0.75
    # positives {2, 3}, negatives {1, 2}: 2>1, 2=2 (half), 3>1, 3>2 -> 3.5 / 4
    assert D.roc_auc(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([False, True, False, True])) == 0.875
    assert D.roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None
    with pytest.raises(ValueError, match="positive"):
        D.roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([True]))


def test_pearson_against_numpy():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(50, generator=gen, dtype=torch.float64)
    b = 0.3 * a + torch.randn(50, generator=gen, dtype=torch.float64)
    assert D.pearson(a, b) == pytest.approx(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]), abs=1e-12)
    assert D.pearson(a, torch.full((50,), 2.0, dtype=torch.float64)) is None
    assert D.pearson(a[:1], b[:1]) is None


def test_label_candidates_objects_by_iou_then_clear_background():
    c = 8.0
    boxes = torch.tensor([
        _box(0, 0, 16, 16),    # 0: the object itself (IoU 1)
        _box(0, 0, 16, 8),     # 1: IoU 0.5 with the object
        _box(0, 0, 8, 8),      # 2: one cell (and IoU 0.25): never chosen
        _box(0, 0, 16, 16),    # 3: duplicate of 0: never chosen
        _box(16, 16, 32, 32),  # 4: clear
        _box(16, 0, 32, 8),    # 5: clear (touches the object's edge only)
        _box(24, 24, 32, 32),  # 6: clear but one cell: too small
        _box(8, 8, 24, 24),    # 7: overlaps: not clear, IoU 1/7
    ])
    cells = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (c * c)).long()
    obj = torch.tensor([_box(0, 0, 16, 16)])
    index, is_object = D.label_candidates(boxes, cells, obj, generator=torch.Generator().manual_seed(0))
    assert index[is_object].tolist() == [0, 1]
    assert sorted(index[~is_object].tolist()) == [4, 5]
    index, is_object = D.label_candidates(boxes, cells, obj, generator=torch.Generator().manual_seed(0),
                                          max_object=1, max_background=1)
    assert index[is_object].tolist() == [0] and index[~is_object].numel() == 1
    # no object in the image: every eligible candidate is background
    index, is_object = D.label_candidates(boxes, cells, torch.zeros(0, 4), generator=torch.Generator(),
                                          max_background=10)
    assert not is_object.any() and sorted(index.tolist()) == [0, 1, 4, 5, 7]
    with pytest.raises(ValueError, match="region_cells"):
        D.label_candidates(boxes, cells[:3], obj, generator=torch.Generator())


# ---------------------------------------------------------------- 5. gold phrase
def test_gold_phrase_accuracy_reads_the_referred_row():
    labels = torch.tensor([[[0.1, 0.5, 9.0], [0.9, 0.2, 0.0]],     # row of region 1: phrase 0 wins
                           [[0.3, 0.3, 0.0], [0.0, 1.0, 0.0]],     # region 0: tie, phrase 0 first
                           [[0.0, 0.2, 5.0], [0.0, 0.0, 0.0]]])    # region 0: phrase 2 absent, phrase 1 wins
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, False]])
    assert D.gold_phrase_accuracy(labels, torch.tensor([1, 0, 0]), mask) == pytest.approx(200.0 / 3)
    assert D.chance_level(mask) == pytest.approx(100.0 * (1 / 3 + 1 / 2 + 1 / 2) / 3)
    with pytest.raises(ValueError, match="phrase_mask"):
        D.gold_phrase_accuracy(labels, torch.tensor([1, 0, 0]), ~mask)


# ---------------------------------------------------------------- model level
@pytest.fixture(scope="module")
def tiny(world):  # noqa: F811
    """A tiny untrained objective of the "tiny" config, UNSIL at both levels, and the heldout grounding split."""
    cfg = load_config("tiny", ["model.text_max_tokens=24", "loss.semantic_source=hybrid"])
    torch.manual_seed(0)
    model = LoupeObjective(cfg.model, cfg.loss).eval()
    tokenizer = Tokenizer.from_file(world.tokenizer, max_length=24)
    split = load_grounding_split(world.heldout.grounding, image_size=cfg.model.image_size)
    return model, tokenizer, split


@pytest.fixture(scope="module")
def tiny_metrics(tiny):
    model, tokenizer, split = tiny
    return D.evaluate_diagnostics(model, split, tokenizer, batch_size=4, progress=False)


def test_model_level_returns_every_documented_key(tiny, tiny_metrics):
    assert set(tiny_metrics) == KEYS | UNSIL_KEYS
    for key, value in tiny_metrics.items():
        assert isinstance(value, float) and math.isfinite(value), key
        if key in PERCENT_KEYS:
            assert 0.0 <= value <= 100.0, key
        else:
            assert -1.0 <= value <= 1.0, key
    assert tiny_metrics["diag_label_auc"] == tiny_metrics["diag_label_auc_interaction"]  # the tiny config's target
    for k in (4, 16):
        assert tiny_metrics[f"diag_recall@{k}"] <= tiny_metrics["diag_recall_oracle"]
        assert tiny_metrics[f"diag_recall_random@{k}"] <= tiny_metrics["diag_recall_oracle"] + 1e-9
    assert tiny_metrics["diag_recall_oracle_strict"] <= tiny_metrics["diag_recall_oracle"]


def test_model_level_is_seeded_and_checks_arguments(tiny, tiny_metrics):
    model, tokenizer, split = tiny
    assert D.evaluate_diagnostics(model, split, tokenizer, batch_size=4, progress=False) == tiny_metrics
    skipped = D.evaluate_diagnostics(model, split, tokenizer, progress=False, num_label_images=0)
    assert skipped == {k: v for k, v in tiny_metrics.items() if ("label" not in k or "alignment" in k)
                       and "semantic" not in k and "unsil" not in k}   # part 3b is cheap: always on
    no_unsil = LoupeObjective(model.model, {"token_num_samples": 4})
    assert not set(D.evaluate_diagnostics(no_unsil, split, tokenizer, progress=False, num_label_images=1)) & UNSIL_KEYS
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="num_label_images"):
            D.evaluate_diagnostics(model, split, tokenizer, num_label_images=bad)
    with pytest.raises(ValueError, match="seed"):
        D.evaluate_diagnostics(model, split, tokenizer, seed=-3)


def test_diagnostics_task_through_evaluate(tiny, tiny_metrics, world):  # noqa: F811
    model, tokenizer, _ = tiny
    assert "diagnostics" in TASKS and check_tasks("all") == PROTOCOL_TASKS
    assert check_tasks(("all", "diagnostics")) == PROTOCOL_TASKS + ("diagnostics",)
    got = evaluate(model.model, {"grounding": world.heldout.grounding}, tokenizer, tasks=("diagnostics",),
                   batch_size=4, progress=False, objective=model)
    assert got == {f"diagnostics/{k}": v for k, v in tiny_metrics.items()}


def test_eval_command_and_run_evaluator_run_the_diagnostics(run_dir, tmp_path, capsys):  # noqa: F811
    from loupe_core.cli import main
    from loupe_core.pipeline import _evaluator, build_data, load_run
    from loupe_core.train.distributed import DistContext

    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", run_dir, "--task", "diagnostics", "--out", str(out), "--no-pictures"]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["tasks"] == ["diagnostics"]
    assert KEYS <= {k.split("/", 1)[1] for k in saved["metrics"]}
    assert "diagnostics/diag_truebox_cls" in capsys.readouterr().out
    # a run whose config lists the task: the pretraining evaluator gives the same numbers
    objective, cfg, _, _ = load_run(run_dir, "cpu")
    cfg.eval.tasks = ("diagnostics",)
    cfg.eval.split = "heldout"
    assert _evaluator(cfg, build_data(cfg, DistContext()), DistContext())(objective) == saved["metrics"]


def test_text_views_match_the_training_batches_and_the_single_encoders(tiny):
    from loupe_core.data import collate_batch, make_sample
    from loupe_core.data.phrases import extract_noun_phrases
    from loupe_core.eval.encode import encode_phrase_list, encode_text_list, encode_text_views

    objective, tokenizer, split = tiny
    model = objective.model
    texts = list(split.expressions[:6]) + ["a picture of nothing at all", "the red circle and the big blue star"]
    views = encode_text_views(model, tokenizer, texts, batch_size=3, progress=False)
    torch.testing.assert_close(views.global_emb, encode_text_list(model, tokenizer, texts, progress=False))
    torch.testing.assert_close(views.first_phrase, encode_phrase_list(model, tokenizer, texts, progress=False))
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    batch = collate_batch([make_sample(image, t, extract_noun_phrases(t), str(i), tokenizer)
                           for i, t in enumerate(texts)])
    with torch.no_grad():
        want = model.phrase_embeddings(model.encode_texts(batch["input_ids"], batch["text_mask"]),
                                       batch["phrase_tokens"])
    assert views.phrase_mask.tolist() == batch["phrase_mask"].tolist()
    torch.testing.assert_close(views.phrases, want * batch["phrase_mask"][..., None], atol=1e-5, rtol=1e-4)


def test_alignment_game_labels_peak_at_the_region_that_is_the_object():
    """One-hot patch embeddings: the object's 4 cells carry the phrase's direction, the rest another;
    among regions of 2 x 2, 3 x 3 and a half object, the excess is largest for the object itself,
    while phi ties it with the 3 x 3 region that contains it (phi grows with swallowed players)."""
    from loupe_core.objective.labels import alignment_game_labels

    grid = 4
    patch = torch.zeros(1, grid * grid, 2)
    patch[..., 1] = 1.0
    obj = [5, 6, 9, 10]
    patch[0, obj] = torch.tensor([1.0, 0.0])
    phrases = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])           # one phrase, one padding row
    phrase_mask = torch.tensor([[True, False]])
    regions = torch.zeros(3, grid * grid, dtype=torch.bool)
    regions[0, obj] = True                                        # the object
    regions[1, [0, 1, 2, 4, 5, 6, 8, 9, 10]] = True               # 3 x 3 holding it
    regions[2, [5, 6]] = True                                     # half of it
    got = alignment_game_labels(patch, phrases, phrase_mask, regions[None], ("phi", "excess"))
    assert got["phi"][0, 0] == pytest.approx(1.0) and got["phi"][0, 1] == pytest.approx(1.0)
    assert got["phi"][0, 2] == pytest.approx(1.0 / 3.0)          # shares the level with the 2 other cells
    excess = got["excess"][0]
    assert excess[0] == pytest.approx(1.0 - 4 / 16) and excess.argmax() == 0


def test_alignment_shapley_iou_is_the_fit_to_the_best_phrase():
    """Same scene: the soft set of the object phrase is the object's 4 cells (the background's
    cosine is 0), so the IoUs are 1, 4/9 and 2/4; a second phrase whose soft set is the 12
    background cells does not lower the object's fit (the best phrase counts, not the mean)."""
    from loupe_core.objective.labels import alignment_game_labels

    grid = 4
    patch = torch.zeros(1, grid * grid, 2)
    patch[..., 1] = 1.0
    obj = [5, 6, 9, 10]
    patch[0, obj] = torch.tensor([1.0, 0.0])
    regions = torch.zeros(3, grid * grid, dtype=torch.bool)
    regions[0, obj] = True
    regions[1, [0, 1, 2, 4, 5, 6, 8, 9, 10]] = True
    regions[2, [5, 6]] = True
    one = alignment_game_labels(patch, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[True, False]]),
                                regions[None], "shapley_iou")
    torch.testing.assert_close(one[0], torch.tensor([1.0, 4 / 9, 0.5]))
    both = alignment_game_labels(patch, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[True, True]]),
                                 regions[None], "shapley_iou")
    background = 5 / (9 + 12 - 5)                                # the 3 x 3 region holds 5 background cells
    torch.testing.assert_close(both[0], torch.tensor([1.0, max(4 / 9, background), 0.5]))
    none = alignment_game_labels(patch, torch.zeros(1, 2, 2), torch.tensor([[False, False]]), regions[None],
                                 "shapley_iou")
    assert torch.equal(none, torch.zeros(1, 3))
