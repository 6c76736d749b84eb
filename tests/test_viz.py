"""Pictures: files are produced, are valid PNGs of nonzero size, and the run's HTML references them.

A real tiny ``LoupeModel`` (untrained) draws the figures; the values in them are checked against
the engine called directly (``shapley_kernels.region_interaction`` / ``region_phrase_interaction``
on the same inputs) and the instability against a float64 loop over ordered run pairs.
"""
import json
import os
import struct

import numpy as np
import pytest
import torch

import shapley_kernels as sk
from loupe_core.data import Tokenizer
from _trainer_helpers import tiny_model
from loupe_core.viz import (alignment_figure, inspect_pair, instability_curve, plot_training_curves,
                            region_interaction_figure)
from loupe_core.viz.matrices import pair_interactions
from loupe_core.viz.regions import region_candidates, token_region_interactions

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CAPTIONS = ["a red circle above a big blue square", "the green triangle", "a small striped star left of a cross"]


def assert_png(path):
    assert os.path.isfile(path) and os.path.getsize(path) > 100
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    assert width > 10 and height > 10


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(CAPTIONS * 3, vocab_size=200)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer.vocab_size, image_size=16, patch_size=4, text_max_tokens=16)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)


def test_region_figure_values_come_from_the_engine(model, tokenizer, image, tmp_path):
    view = inspect_pair(model, tokenizer, image, CAPTIONS[0])
    boxes, conf, masks, random = region_candidates(model, view, num_random=2, seed=3)
    assert random == [False] * 3 + [True] * 2 and masks.shape == (5, 16)
    got = token_region_interactions(model, view, boxes, masks, num_samples=4, seed=5)
    with torch.no_grad():
        img_tokens = model.image_tower.embed_tokens(view.batch["images"])
        txt_tokens = model.text_tower.embed_tokens(view.batch["input_ids"])
    want = sk.region_interaction(model.image_tower, model.text_tower, img_tokens, txt_tokens, masks[None],
                                 text_mask=view.batch["text_mask"], method="auto", num_samples=4, seed=5).value[0]
    torch.testing.assert_close(got, want.float())
    path = region_interaction_figure(model, view, image, str(tmp_path / "regions.png"), num_samples=4)
    assert_png(path)


def test_alignment_figure_and_pair_interactions(model, tokenizer, image, tmp_path):
    view = inspect_pair(model, tokenizer, image, CAPTIONS[0])
    M = int(view.batch["phrase_mask"].sum())
    assert M >= 2 and len(view.phrases) == M and view.A.shape == (1, 3, M)
    got = pair_interactions(view)
    want = sk.region_phrase_interaction(view.A.double(), method="exact")[0]
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
    assert_png(alignment_figure(view, str(tmp_path / "alignment.png")))


def test_instability_curve_matches_pairwise_loop(rng_seed):
    g = torch.Generator().manual_seed(rng_seed)
    A = 3.0 * torch.randn(1, 3, 2, generator=g, dtype=torch.float64)
    masks = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    curve = instability_curve(A, *masks, sample_counts=(4, 64), seeds=(0, 1, 2))
    for n, value in curve.items():
        runs = [sk.region_phrase_interaction(A, *masks, method="sampling", num_samples=n, seed=s).flatten().tolist()
                for s in (0, 1, 2)]
        pairs = [(u, v) for u in range(3) for v in range(3) if u != v]
        spread = sum(sum(abs(a - b) for a, b in zip(runs[u], runs[v])) / len(runs[u]) for u, v in pairs) / len(pairs)
        scale = sum(abs(x) for run in runs for x in run) / sum(len(r) for r in runs)
        assert value == pytest.approx(spread / scale, rel=1e-9)
    with pytest.raises(ValueError, match="seeds"):
        instability_curve(A, *masks, seeds=(0,))


def test_training_curves_from_jsonl(tmp_path):
    history = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 2.0 / s, "loss/cmc": 1.0 / s, "train/lr": 1e-3} for s in range(1, 6)]
    records.append({"step": 5, "eval/retrieval/i2t_r1": 12.5, "loss": None})
    history.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert_png(plot_training_curves(str(history), str(tmp_path / "curves.png")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match="without 'step'"):
        plot_training_curves(str(bad), str(tmp_path / "bad.png"))


# issue 32 friction 8: legends cover no point, labels do not overlap, a colour scale, no all-1.00 matrix

def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_the_legend_covers_no_eval_point(tmp_path):
    from loupe_core.viz.curves import draw_training_curves

    history = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 2.0 / s} for s in range(1, 6)]
    records.append({"step": 5, **{f"eval/retrieval/{k}": 10.0 + i for i, k in enumerate(("i2t_r1", "t2i_r1", "i2t_r5"))}})
    history.write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = draw_training_curves(str(history))
    fig.savefig(str(tmp_path / "curves.png"), bbox_inches="tight")
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        for line in ax.get_lines():
            for xy in ax.transData.transform(line.get_xydata()):
                assert not (legend.x0 <= xy[0] <= legend.x1 and legend.y0 <= xy[1] <= legend.y1)
        assert not _boxes_overlap(legend, ax.get_window_extent(renderer))


def test_region_labels_do_not_overlap_and_interactions_have_a_colour_scale(tmp_path):
    from loupe_core.viz.regions import draw_regions

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 20.0, 12.0], [1.0, 1.0, 10.0, 30.0],
                          [0.0, 0.0, 32.0, 32.0], [16.0, 16.0, 32.0, 32.0]])  # four share a corner
    interactions = torch.tensor([0.3, -0.1, 0.05, -0.4, 0.0])
    fig = draw_regions(image, boxes, torch.full((5,), 0.5), interactions, random=[False] * 3 + [True] * 2)
    renderer = fig.canvas.get_renderer()
    image_ax, colour_ax = fig.axes
    tags = [t.get_window_extent(renderer) for t in image_ax.texts]
    assert len(tags) == 5
    assert not any(_boxes_overlap(a, b) for i, a in enumerate(tags) for b in tags[i + 1:])
    legend = image_ax.get_legend()
    assert [t.get_text()[:2] for t in legend.get_texts()] == ["#0", "#1", "#2", "#3", "#4"]
    assert not _boxes_overlap(legend.get_window_extent(renderer), image_ax.get_window_extent(renderer))
    low, high = sorted(colour_ax.get_ylim())
    assert low == pytest.approx(-0.4) and high == pytest.approx(0.4)  # symmetric about 0, the largest |I|
    edge = [p.get_edgecolor() for p in image_ax.patches]
    from matplotlib import colormaps

    assert edge[3] == pytest.approx(colormaps["coolwarm"](0.0)) and edge[4] == pytest.approx(colormaps["coolwarm"](0.5))


def test_a_one_phrase_caption_shows_the_softmax_over_regions():
    from loupe_core.viz.matrices import alignment_panel

    A = torch.tensor([[1.0, 7.0], [3.0, 7.0], [0.0, 7.0]], dtype=torch.float64)
    one = torch.tensor([True, False])
    panel, name = alignment_panel(A, one)
    torch.testing.assert_close(panel[:, 0], torch.softmax(A[:, 0], dim=0))
    assert not panel[:, 1].any() and "one phrase" in name
    both, name = alignment_panel(A, torch.tensor([True, True]))
    torch.testing.assert_close(both, torch.softmax(A, dim=1))
    assert name == "alignment softmax_j(A)"
    none, _ = alignment_panel(A, torch.tensor([False, False]))
    assert not none.any()
