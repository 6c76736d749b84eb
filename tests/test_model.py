"""LoupeModel: configs, region head geometry, proposals, the Swin wrapper (the losses: test_objective.py)."""
import itertools
import sys

import pytest
import torch

from loupe_core.model import LoupeModel, ModelConfig
from loupe_core.objective import LossConfig, LoupeObjective
from loupe_core.model.region_head import anchor_boxes, box_iou, cells_in_boxes, greedy_nms

TINY = dict(image_size=32, patch_size=8, image_dim=32, image_depth=1, image_heads=2, text_vocab_size=64,
            text_dim=32, text_depth=1, text_heads=2, text_max_tokens=12, text_dropout=0.0, embed_dim=32,
            anchors=[[1, 1], [2, 2], [3, 2]], top_k=2, num_random=1)
FAST = dict(token_num_samples=3, semantic_num_samples=20, pairs_per_step=2, probe_size=2)


def make_batch(B=4, L=8, M=3, seed=0, dtype=torch.float32):
    """A fixed random batch in the CONTRACTS section 3 format (vocab 64)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, L - 3, L - 1, 4, L, 5][:B])
    text_mask = torch.arange(L)[None, :] < lengths[:, None]
    input_ids = torch.randint(1, 64, (B, L), generator=g) * text_mask
    phrase_tokens = torch.zeros(B, M, L, dtype=torch.bool)
    phrase_mask = torch.zeros(B, M, dtype=torch.bool)
    for b in range(B):
        for m in range(min(M, 1 + b % M)):
            phrase_tokens[b, m, 2 * m:2 * m + 2] = True
            phrase_mask[b, m] = True
    return dict(images=torch.randn(B, 3, 32, 32, generator=g, dtype=dtype), input_ids=input_ids,
                text_mask=text_mask, phrase_tokens=phrase_tokens, phrase_mask=phrase_mask,
                captions=["c"] * B, keys=[str(b) for b in range(B)])


# ------------------------------------------------------------------------------ configs
def test_configs_round_trip_and_reject_unknown_keys():
    cfg = ModelConfig.from_dict(TINY)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    lcfg = LossConfig.from_dict(dict(tsa=True, fsa=True, unsil=True, token_source="hybrid"))
    assert LossConfig.from_dict(lcfg.to_dict()) == lcfg and lcfg.hybrid_levels() == ["token"]
    with pytest.raises(ValueError, match="'image_szie'"):
        ModelConfig.from_dict({"image_szie": 32})
    with pytest.raises(ValueError, match="unsil"):
        LossConfig(tsa=True, token_source="hybrid")
    with pytest.raises(ValueError, match="hybrid"):
        LossConfig(unsil=True)
    with pytest.raises(ValueError, match="patch_size"):
        ModelConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="token_source"):
        LossConfig(token_source="magic")
    with pytest.raises(ValueError, match="anchors"):
        ModelConfig(anchors=[[1, 0]])


def test_swin_without_timm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ValueError, match="timm"):
        LoupeModel(dict(TINY, image_tower="swin"))


# ------------------------------------------------------------------------------ region head
def test_candidate_geometry_matches_the_box_definition():
    """Cells: centres inside the centred anchor box (always the centre cell); box: the cells' rectangle."""
    model = LoupeModel(TINY)
    geo = model.region_head.geometry((4, 4), 8.0, torch.device("cpu"), torch.float32)
    anchors = TINY["anchors"]
    assert geo.boxes.shape == (16 * 3, 4) and geo.masks.shape == (16 * 3, 16)
    for cell, a in itertools.product(range(16), range(3)):
        r, c = divmod(cell, 4)
        cx, cy = (c + 0.5) * 8, (r + 0.5) * 8
        w, h = anchors[a][0] * 8, anchors[a][1] * 8
        x0, y0, x1, y1 = max(cx - w / 2, 0), max(cy - h / 2, 0), min(cx + w / 2, 32), min(cy + h / 2, 32)
        want = [x0 <= (cc + 0.5) * 8 < x1 and y0 <= (rr + 0.5) * 8 < y1 for rr in range(4) for cc in range(4)]
        want[cell] = True  # always the centre cell
        assert geo.masks[cell * 3 + a].tolist() == want
        rows = [rr for rr in range(4) if any(want[rr * 4 + cc] for cc in range(4))]
        cols = [cc for cc in range(4) if any(want[rr * 4 + cc] for rr in range(4))]
        assert geo.boxes[cell * 3 + a].tolist() == [cols[0] * 8, rows[0] * 8, (cols[-1] + 1) * 8, (rows[-1] + 1) * 8]
    assert geo.masks[0::3].sum(1).eq(1).all()  # a 1x1 anchor is exactly its cell
    torch.testing.assert_close(geo.iou, box_iou(geo.boxes, geo.boxes))
    assert torch.equal(cells_in_boxes(geo.boxes, (4, 4), 8.0), geo.masks)  # box and cells agree


def test_even_anchor_box_is_its_cells_rectangle():
    """Hand-computed: a 2x2 anchor at cell (row 1, col 2) of a 4x4 grid of 8-px cells takes rows
    0-1 and columns 1-2 (the centre cell and its upper/left side), so its box is [8, 0, 24, 16]."""
    head = LoupeModel(dict(TINY, anchors=[[2, 2], [2, 1]])).region_head
    geo = head.geometry((4, 4), 8.0, torch.device("cpu"), torch.float32)
    cell = 1 * 4 + 2
    assert geo.boxes[cell * 2].tolist() == [8.0, 0.0, 24.0, 16.0]
    assert geo.masks[cell * 2].nonzero().flatten().tolist() == [1, 2, 5, 6]
    assert geo.boxes[cell * 2 + 1].tolist() == [8.0, 8.0, 24.0, 16.0]  # 2 wide, 1 high
    corner = 0  # clipped at the image border: only the cell itself
    assert geo.boxes[corner * 2].tolist() == [0.0, 0.0, 8.0, 8.0]


def test_greedy_nms_against_brute_force():
    g = torch.Generator().manual_seed(0)
    boxes = anchor_boxes((4, 4), 8.0, [[1, 1], [2, 2], [3, 3]])
    iou = box_iou(boxes, boxes)
    for _ in range(5):
        scores = torch.randn(boxes.shape[0], generator=g)
        kept = greedy_nms(scores, iou, 4, 0.35).tolist()
        want = []
        for i in sorted(range(len(scores)), key=lambda i: -float(scores[i])):
            if all(float(iou[i, j]) <= 0.35 for j in want):
                want.append(i)
        assert kept == want[:4]
    # fewer survivors than top_k: the best suppressed fill the list
    scores = torch.arange(boxes.shape[0], dtype=torch.float32)
    assert len(greedy_nms(scores, iou, boxes.shape[0], 0.0)) == boxes.shape[0]


def test_select_top_k_plus_uniform_contrast_candidates():
    torch.manual_seed(0)
    model = LoupeModel(TINY)
    geo = model.region_head.geometry((4, 4), 8.0, torch.device("cpu"), torch.float32)
    logits = torch.randn(3, 48)
    seen = torch.zeros(3, 48)
    for _ in range(300):
        index = model.region_head.select(logits, geo, 2, 2, 0.5)
        assert index.shape == (3, 4)
        for b in range(3):
            assert index[b, :2].tolist() == greedy_nms(logits[b], geo.iou, 2, 0.5).tolist()
            assert len(set(index[b].tolist())) == 4  # contrast candidates are never top ones
        seen.scatter_add_(1, index[:, 2:], torch.ones(3, 2))
    top = index[:, :2]
    assert (seen.gather(1, top) == 0).all()
    assert (seen.scatter(1, top, 1.0) > 0).all()  # every other candidate gets drawn


def test_propose_regions_consistent_with_contract():
    torch.manual_seed(0)
    model = LoupeModel(TINY).eval()
    batch = make_batch()
    feats = model.encode_images(batch["images"])
    regions = model.propose_regions(feats, top_k=3)
    assert regions.boxes.shape == (4, 3, 4) and regions.patch_masks.shape == (4, 3, 16)
    assert regions.emb.shape == (4, 3, 32)
    torch.testing.assert_close(regions.emb.norm(dim=-1), torch.ones(4, 3))
    assert torch.equal(regions.patch_masks, cells_in_boxes(regions.boxes, feats.grid, feats.patch_size)
                       | regions.patch_masks)
    assert (regions.scores[:, :-1] >= regions.scores[:, 1:]).all()  # best first
    txt = model.encode_texts(batch["input_ids"], batch["text_mask"])
    phrases = model.phrase_embeddings(txt, batch["phrase_tokens"])
    want = torch.nn.functional.normalize(
        (batch["phrase_tokens"][1, 0].float() @ txt.token_emb[1]) / batch["phrase_tokens"][1, 0].sum(), dim=0)
    torch.testing.assert_close(phrases[1, 0], want)
    img, tx = LoupeObjective(model)(batch, embed_only=True)
    torch.testing.assert_close(img, feats.global_emb)
    torch.testing.assert_close(tx, txt.global_emb)


# ------------------------------------------------------------------------------ Swin wrapper
class _TinySwinLike(torch.nn.Module):
    """A two-stage stand-in with timm Swin's interface (timm itself is optional and absent here):
    NHWC ``patch_embed`` (4-pixel patches), ``pos_drop``, ``layers`` (a 2x2 patch merge), ``norm``,
    ``num_features``, ``absolute_pos_embed``."""

    def __init__(self, dim=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, dim, 4, stride=4)
        self.patch_embed = lambda x: self.conv(x).permute(0, 2, 3, 1)
        self.pos_drop = torch.nn.Identity()
        self.absolute_pos_embed = None
        self.merge = torch.nn.Linear(4 * dim, 2 * dim)
        self.layers = torch.nn.Sequential(_PatchMerge(self.merge))
        self.norm = torch.nn.LayerNorm(2 * dim)
        self.num_features = 2 * dim


class _PatchMerge(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):  # [B, H, W, C] -> [B, H/2, W/2, 2C]
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H // 2, W // 2, 4 * C)
        return self.linear(x)


def test_swin_wrapper_grids_zero_baseline_and_no_drop(monkeypatch):
    fake = type(sys)("timm")
    fake.create_model = lambda name, **kw: _TinySwinLike()
    monkeypatch.setitem(sys.modules, "timm", fake)
    torch.manual_seed(0)
    objective = LoupeObjective(dict(TINY, image_tower="swin"), dict(FAST, tsa=True, fsa=True))
    tower = objective.model.image_tower
    assert (tower.token_grid, tower.token_cell, tower.final_grid, tower.final_cell) == ((8, 8), 4.0, (4, 4), 8.0)
    assert tower.supports_drop is False
    out = objective(make_batch())
    out.total.backward()
    assert torch.isfinite(out.total) and set(out.terms) == {"cmc", "tsa", "fsa"}
    tokens = tower.embed_tokens(torch.randn(2, 3, 32, 32))
    keep = torch.ones(2, 64, dtype=torch.bool)
    keep[0, 3] = False
    with pytest.raises(ValueError, match="drop"):
        tower(tokens, keep)
    with pytest.raises(ValueError, match="drop"):
        LoupeObjective(dict(TINY, image_tower="swin"), dict(tsa=True, token_baseline="drop"))
